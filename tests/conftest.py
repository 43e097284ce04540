"""Suite-wide settings, applied before any test module imports Ultralytics.

Offline by design: Ultralytics checks connectivity at import (DNS lookups) and may pip-install missing requirements;
``YOLO_OFFLINE=1`` and ``YOLO_AUTOINSTALL=False`` switch both off. Its detection-dataset check also looks for Arial
fonts online unless they are in its config folder, so the suite gets a config folder of its own with local fonts
(``pst_yolo.offline``), which also keeps the user's Ultralytics settings untouched. Every subprocess the tests start
inherits this environment; tests/test_offline.py proves that nothing reaches out.
"""

import os
import tempfile

from pst_yolo.offline import seed_fonts, set_offline_env

set_offline_env()
os.environ["YOLO_OFFLINE"], os.environ["YOLO_AUTOINSTALL"] = "1", "False"  # also when the caller's env says otherwise
os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="pst-yolo-tests-ultralytics-")
seed_fonts()  # into the folder Ultralytics derives from YOLO_CONFIG_DIR
