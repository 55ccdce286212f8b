"""Reference encoders: raw images, audio, text and video to the vectors and tokens that the
fusion and alignment modules take, plus adapters for backbones and pretrained models."""

from __future__ import annotations

from .adapter import BackboneAdapter
from .audio import AudioEncoder
from .image import ImageEncoder
from .sentence import SentenceEncoder
from .text import ByteTokenizer, TextEncoder, TokenizedText
from .video import VideoEncoder

__all__ = [
    "AudioEncoder",
    "BackboneAdapter",
    "ByteTokenizer",
    "ImageEncoder",
    "SentenceEncoder",
    "TextEncoder",
    "TokenizedText",
    "VideoEncoder",
]
