"""Stage 2, maps: CHIP and Refined CHIP maps of images for classes (``explain``: the API and the
checks of a request), and explaining image files into overlays and raw maps (``files``)."""
