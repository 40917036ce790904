import subprocess
import sys


def test_zip_functions_do_not_import_the_heavy_libraries() -> None:
    # split_manifest, finalize and reconcile ship as small zip functions: no numpy, Pillow or MXNet.
    code = (
        "import sys\n"
        "from batchpredict.handlers import finalize, reconcile, split_manifest\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'mxnet') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
