"""Interpreter start-up hook, run by ``pst_yolo.pth`` in site-packages.

The stock ``yolo`` command, DDP workers and plain ``python`` never import pst_yolo, so this module puts a tiny finder at
the front of ``sys.meta_path``. It imports neither torch nor Ultralytics: it only waits until Ultralytics' own modules
(and torch.compile's configuration) are imported, then runs ``pst_yolo.integration.on_import`` right after each target
module has executed. Installing
twice is a no-op; a module imported before the hook was installed is handled at once.
"""

import sys

TARGETS = ("ultralytics.utils.checks", "ultralytics.nn.tasks", "torch._dynamo.config")


class _PostImportLoader:
    """Wraps a module's real loader and calls the integration once the module body has run."""

    def __init__(self, loader, name):
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run(self._name)

    def __getattr__(self, attr):  # get_source, get_filename, ... for inspect/linecache
        return getattr(self._loader, attr)


class PSTImportHook:
    """``sys.meta_path`` finder that wraps the loaders of ``TARGETS``; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PostImportLoader(spec.loader, name)
                return spec
        return None


def _run(name):
    from pst_yolo.integration import on_import

    on_import(name)


def install():
    """Install the hook once per interpreter."""
    if any(isinstance(f, PSTImportHook) or type(f).__name__ == "PSTImportHook" for f in sys.meta_path):
        return
    sys.meta_path.insert(0, PSTImportHook())
    for name in TARGETS:
        if name in sys.modules:
            _run(name)
