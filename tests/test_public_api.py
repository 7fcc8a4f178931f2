import subprocess
import sys

import ragkit


def test_all_is_sorted_and_every_name_resolves():
    assert ragkit.__all__ == sorted(ragkit.__all__)
    for name in ragkit.__all__:
        assert getattr(ragkit, name) is not None, name


def test_public_names_are_exactly_all():
    import types

    listed = {
        name for name in dir(ragkit)
        if not name.startswith("_") and not isinstance(getattr(ragkit, name, None), types.ModuleType)
    } - {"annotations", "TYPE_CHECKING", "Any"}
    assert listed <= set(ragkit.__all__), listed - set(ragkit.__all__)
    assert set(ragkit.__all__) - {"__version__"} <= set(dir(ragkit))


def test_import_is_light():
    code = "import sys, ragkit; print(sorted(m for m in ('faiss', 'torch', 'bm25s', 'spacy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_testing_helpers_are_exactly_all():
    import types

    import ragkit.testing as testing

    assert testing.__all__ == sorted(testing.__all__)
    defined = {
        name for name, value in vars(testing).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", None) == "ragkit.testing"
    }
    lazy = {"VectorIndexConformance"}  # from ragkit.conformance, imported on first use (it needs pytest)
    assert defined | lazy == set(testing.__all__), (defined | lazy) ^ set(testing.__all__)
    from ragkit.conformance import VectorIndexConformance

    assert testing.VectorIndexConformance is VectorIndexConformance


def test_testing_imports_no_pytest():
    code = "import sys, ragkit.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
