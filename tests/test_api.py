import subprocess
import sys

import pytest

import semtrack


@pytest.mark.parametrize("name", [n for n in semtrack.__all__ if n != "__version__"])
def test_every_public_name_resolves(name):
    assert getattr(semtrack, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = semtrack.no_such_thing


def test_core_import_does_not_pull_in_napari_or_qt():
    code = (
        "import sys, semtrack, semtrack.pipeline, semtrack.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'PyQt5', 'qtpy', 'vispy')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
