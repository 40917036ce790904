import os
import subprocess
import sys


def test_zip_functions_do_not_import_the_heavy_libraries() -> None:
    # split_manifest, finalize, reconcile and sweep ship as small zip functions: no numpy, Pillow or MXNet.
    code = (
        "import sys\n"
        "from batchpredict.handlers import finalize, reconcile, split_manifest, sweep\n"
        "print(sorted(m for m in ('numpy', 'PIL', 'mxnet') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_functions_run_without_the_type_stubs() -> None:
    # The mypy_boto3_* stubs are dev dependencies, absent from the Lambda zips and the image:
    # the handlers and every client aws.client makes must not need them at run time.
    code = (
        "import sys\n"
        "class NoStubs:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith('mypy_boto3'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoStubs())\n"
        "from batchpredict import aws, wiring\n"
        "from batchpredict.handlers import finalize, predict, predict_api, reconcile, split_manifest, sweep\n"
        "for service in ('cloudformation', 'dynamodb', 'events', 's3', 'sqs'):\n"
        "    aws.client(service)\n"
        "print(sorted(m for m in sys.modules if m.startswith('mypy_boto3')))\n"
    )
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"
