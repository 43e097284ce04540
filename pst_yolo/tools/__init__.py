"""The ``pst-yolo`` command's tools, one module per command (``pst_yolo.tools.cli`` lists them); each has
``parser()`` (its options) and ``main(argv)``."""
