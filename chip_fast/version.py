"""The version of chip_fast, recorded in every importance file it writes."""
__version__ = "0.1.0"
