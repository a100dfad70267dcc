"""The channel atlas: each channel's strongest distillation patches, streamed from the prefix
passes (``collect``), and its rows in the pages people read (``report``)."""
from .collect import ChannelAtlas, channel_maps, top_channels

__all__ = ["ChannelAtlas", "channel_maps", "top_channels"]
