"""Defaults shared by the settings and the modules that use them, in a module that imports
nothing heavy: the split and finalize functions must not load numpy, Pillow or MXNet."""

DEFAULT_MAX_BATCH = 32
DEFAULT_TOP_K = 5
# 50 MP admits full-size photos from 48 MP phone and camera sensors, and sits below Pillow's own
# bomb limit (~89 MP), so with the default our header check rejects an image before Pillow would
# warn about it. What one decode under the cap holds is no fixed figure: Pillow keeps RGB in 4
# bytes a pixel (200 MB at 50 MP, not 150), and measured peaks run from 1 (a grey PNG) and ~4 (a
# baseline JPEG, decoded at full size: drafting changed predictions) through 5-10 (palette with
# transparency, RGBA, CMYK, a progressive JPEG) to ~16 (WebP, whose decoder keeps two canvases:
# ~800 MB). Decodes are admitted into a memory budget by images.decode_memory_bytes, an upper
# bound on that peak read from the header.
DEFAULT_MAX_PIXELS = 50_000_000
