"""chip_fast: fast CHIP (channel-wise disentangled interpretation) for convolutional networks."""
__version__ = "0.1.0"
