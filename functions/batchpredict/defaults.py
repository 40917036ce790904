"""Defaults shared by the settings and the modules that use them, in a module that imports
nothing heavy: the split and finalize functions must not load numpy, Pillow or MXNet."""

DEFAULT_MAX_BATCH = 32
DEFAULT_TOP_K = 5
# 50 MP is ~150 MB as 8-bit RGB, plus a copy or two while converting: about the most one image in
# flight may cost a Lambda worker, yet it still admits full-size photos from 48 MP phone and
# camera sensors. It also sits below Pillow's own bomb limit (~89 MP), so with the default our
# header check rejects an image before Pillow would warn about it.
DEFAULT_MAX_PIXELS = 50_000_000
