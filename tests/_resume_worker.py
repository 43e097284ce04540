"""Subprocess worker for tests/test_reliability.py: train with the Python API and die hard after the first epoch.

``os._exit`` skips every finaliser and Ultralytics' own clean-up, like a killed job; last.pt of epoch 1 is already on
disk because Ultralytics saves before ``on_fit_epoch_end``.
"""

import json
import os
import sys

from ultralytics import YOLO


def die_after_first_epoch(trainer):
    if trainer.epoch == 0:
        sys.stdout.flush()
        os._exit(17)


if __name__ == "__main__":
    model, overrides = sys.argv[1], json.loads(sys.argv[2])
    yolo = YOLO(model)
    yolo.add_callback("on_fit_epoch_end", die_after_first_epoch)
    yolo.train(**overrides)
    sys.exit("training finished without being interrupted")
