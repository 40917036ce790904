"""A deployed stack as the CLI finds it: by name (--stack or BATCHPREDICT_STACK), through
CloudFormation outputs, with the AWS CLI's --profile and --region, against a moto server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner, Result

from batchpredict.cli import main
from batchpredict.cli.targets import LOCAL_DIR_ENV, STACK_ENV
from batchpredict.jobs import JobStore

REGION = "eu-west-1"  # the profile's region; the stack exists only there
TEMPLATE = {
    "Resources": {
        "In": {"Type": "AWS::S3::Bucket"},
        "Out": {"Type": "AWS::S3::Bucket"},
        "Table": {
            "Type": "AWS::DynamoDB::Table",
            "Properties": {
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                ],
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
            },
        },
    },
    "Outputs": {
        "InputBucketName": {"Value": {"Ref": "In"}},
        "OutputBucketName": {"Value": {"Ref": "Out"}},
        "ResultsTableName": {"Value": {"Ref": "Table"}},
    },
}


@pytest.fixture
def deployed(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A stack in eu-west-1 and a profile 'bp-test' (eu-west-1, its own keys); no credentials
    or region in the environment, so only --profile/--region can reach it."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "config").write_text(f"[profile bp-test]\nregion = {REGION}\n")
    (tmp_path / "credentials").write_text("[bp-test]\naws_access_key_id = bp\naws_secret_access_key = bp\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.delenv(STACK_ENV, raising=False)
    session = boto3.session.Session(profile_name="bp-test")
    cfn = session.client("cloudformation")
    name = f"bp-cli-{uuid.uuid4().hex[:8]}"
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(TEMPLATE))
    yield name
    cfn.delete_stack(StackName=name)


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def test_submit_and_status_with_profile_and_default_stack(deployed: str, tmp_path: Path) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text("https://example.com/a.jpg\n")
    submitted = _run("submit", str(manifest), "--profile", "bp-test", env={STACK_ENV: deployed})
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    session = boto3.session.Session(profile_name="bp-test")
    outputs = session.client("cloudformation").describe_stacks(StackName=deployed)["Stacks"][0]["Outputs"]
    names = {o["OutputKey"]: o["OutputValue"] for o in outputs}
    uploaded = session.client("s3").get_object(Bucket=names["InputBucketName"], Key="manifests/urls.txt")
    assert uploaded["Body"].read() == manifest.read_bytes()

    jobs = JobStore(session.client("dynamodb"), names["ResultsTableName"])
    jobs.create(job_id, f"s3://{names['InputBucketName']}/manifests/urls.txt", "m-1")
    shown = _run("status", job_id, "--stack", deployed, "--profile", "bp-test", "--output", "json")
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert (record["job_id"], record["status"]) == (job_id, "SPLITTING")
    text = _run("status", job_id, "--stack", deployed, "--profile", "bp-test", "--output", "text")
    assert text.stdout.split("\t")[:2] == [job_id, "SPLITTING"]


def test_region_overrides_the_profile_and_missing_things_are_one_line(deployed: str) -> None:
    elsewhere = _run("jobs", "--stack", deployed, "--profile", "bp-test", "--region", "us-west-2")
    assert elsewhere.exit_code == 1 and f"stack {deployed!r} not found" in elsewhere.output
    no_profile = _run("jobs", "--stack", deployed, "--profile", "nobody")
    assert no_profile.exit_code == 1 and "nobody" in no_profile.output
    no_region = _run("jobs", "--stack", deployed)
    assert no_region.exit_code == 1 and "no AWS region" in no_region.output
    assert "Traceback" not in elsewhere.output + no_profile.output + no_region.output


def test_local_wins_over_the_environment_and_refuses_a_profile(
    deployed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOCAL_DIR_ENV, str(tmp_path / "no-stack"))
    # BATCHPREDICT_STACK names a deployed stack, --local asks for the local one (none runs here).
    local = _run("jobs", "--local", env={STACK_ENV: deployed})
    assert local.exit_code == 1 and "no local stack is running" in local.output
    both = _run("jobs", "--local", "--stack", deployed)
    assert both.exit_code == 1 and "either --local or --stack" in both.output
    profiled = _run("jobs", "--local", "--profile", "bp-test")
    assert profiled.exit_code == 1 and "--profile and --region are for a deployed stack" in profiled.output


def test_submit_sends_the_options_as_the_splitter_reads_them(deployed: str, tmp_path: Path) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text("https://example.com/a.jpg\n")
    options = (
        *("--top-k", "20", "--max-failures", "1000000", "--timeout", "604800", "--fidelity", "fast"),
        "--ignore-robots",
    )
    submitted = _run("submit", str(manifest), "--stack", deployed, "--profile", "bp-test", *options)
    assert submitted.exit_code == 0, submitted.output
    session = boto3.session.Session(profile_name="bp-test")
    outputs = session.client("cloudformation").describe_stacks(StackName=deployed)["Stacks"][0]["Outputs"]
    bucket = {o["OutputKey"]: o["OutputValue"] for o in outputs}["InputBucketName"]
    head = session.client("s3").head_object(Bucket=bucket, Key="manifests/urls.txt")
    assert head["Metadata"] == {
        "top-k": "20",
        "max-failures": "1000000",
        "timeout": "604800",
        "fidelity": "fast",
        "robots": "ignore",
    }
    too_many = _run("submit", str(manifest), "--stack", deployed, "--profile", "bp-test", "--top-k", "21")
    assert too_many.exit_code == 2 and "21 is not in the range 1<=x<=20" in too_many.output
