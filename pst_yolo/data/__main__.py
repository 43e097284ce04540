"""``python -m pst_yolo.data``: the same as ``pst-yolo data``."""

from pst_yolo.tools.data import main

if __name__ == "__main__":
    raise SystemExit(main())
