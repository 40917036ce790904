"""The translated template deployed into a moto server with create_stack (CREATE_COMPLETE),
checked through the services' APIs: what a deployed stack really holds. The fix-ups moto
needs are listed in tests/infra/motostack.py."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote_plus

import boto3
import pytest

from batchpredict.config import api_config, finalize_config, predict_config, split_config, sweep_config
from batchpredict.jobs import MANIFEST_INDEX, STATUS_INDEX
from tests.infra.cfn import (
    DLQ_RETENTION,
    MIN_MAX_RECEIVE_COUNT,
    PIPELINE_QUEUES,
    VISIBILITY_FACTOR,
    resources,
)
from tests.infra.conftest import CUSTOM_PARAMETERS
from tests.infra.motostack import MADE_BY_API, DeployedStack

CONFIG_PARSERS = {
    "SplitManifestFunction": split_config,
    "PredictFunction": predict_config,
    "FinalizeFunction": finalize_config,
    "ReconcileFunction": finalize_config,
    "PredictApiFunction": api_config,
    "SweepFunction": sweep_config,
}
CONSUMERS = {
    "ManifestQueue": "SplitManifestFunction",
    "WorkQueue": "PredictFunction",
    "FinalizeQueue": "FinalizeFunction",
    "WorkDeadLetterQueue": "ReconcileFunction",
    "FinalizeDeadLetterQueue": "ReconcileFunction",
    "ManifestDeadLetterQueue": "ReconcileFunction",
}
DEAD_LETTER_QUEUES = {
    "ManifestQueue": "ManifestDeadLetterQueue",
    "WorkQueue": "WorkDeadLetterQueue",
    "FinalizeQueue": "FinalizeDeadLetterQueue",
    "WorkDeadLetterQueue": "ReconcileDeadLetterQueue",
    "FinalizeDeadLetterQueue": "ReconcileDeadLetterQueue",
    "ManifestDeadLetterQueue": "ReconcileDeadLetterQueue",
}


def _queue(stack: DeployedStack, name: str) -> dict[str, str]:
    return boto3.client("sqs").get_queue_attributes(  # type: ignore[no-any-return]
        QueueUrl=stack.physical[name], AttributeNames=["All"]
    )["Attributes"]


def _function(stack: DeployedStack, name: str) -> dict[str, Any]:
    config: dict[str, Any] = boto3.client("lambda").get_function_configuration(
        FunctionName=stack.physical[name]
    )
    # moto keeps a Number parameter's value as an int inside Environment; Lambda stores strings.
    variables = config.get("Environment", {}).get("Variables", {})
    config["Environment"] = {"Variables": {k: str(v) for k, v in variables.items()}}
    return config


def _role_policy(stack: DeployedStack, role: str) -> dict[str, Any]:
    """The role's one inline policy document; no managed policy attached."""
    iam = boto3.client("iam")
    name = stack.physical[role]
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
    (policy,) = iam.list_role_policies(RoleName=name)["PolicyNames"]
    document = iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
    if isinstance(document, str):
        # moto's CloudFormation stores an inline policy as the Python repr of the dict.
        document = ast.literal_eval(document)
    # moto leaves an Fn::If that chose AWS::NoValue as None in a list; CloudFormation drops it.
    document["Statement"] = [s for s in document["Statement"] if s is not None]
    return document  # type: ignore[no-any-return]


@contextmanager
def _bucket_policy_lifted(bucket: str) -> Iterator[None]:
    """moto evaluates bucket policies without their Condition, so the deny-non-TLS statement
    denies every object call; lift it for the duration (AWS applies it to plain HTTP only)."""
    s3 = boto3.client("s3")
    policy = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    s3.delete_bucket_policy(Bucket=bucket)
    try:
        yield
    finally:
        s3.put_bucket_policy(Bucket=bucket, Policy=policy)


def _mapping(stack: DeployedStack, queue: str) -> dict[str, Any]:
    (mapping,) = boto3.client("lambda").list_event_source_mappings(EventSourceArn=stack.arn(queue))[
        "EventSourceMappings"
    ]
    return mapping  # type: ignore[no-any-return]


@contextmanager
def _mapping_paused(stack: DeployedStack, queue: str) -> Iterator[None]:
    """moto invokes a mapped function (in Docker) on every message sent to its queue; pause the
    mapping so the test reads the event itself."""
    lam = boto3.client("lambda")
    uuid = _mapping(stack, queue)["UUID"]
    lam.update_event_source_mapping(UUID=uuid, Enabled=False)
    try:
        yield
    finally:
        lam.update_event_source_mapping(UUID=uuid, Enabled=True)


def test_every_resource_is_deployed(stack: DeployedStack, cfn: dict[str, Any]) -> None:
    summaries = boto3.client("cloudformation").list_stack_resources(StackName=stack.name)[
        "StackResourceSummaries"
    ]
    by_create_stack = {
        s["LogicalResourceId"]
        for s in summaries
        if s["ResourceStatus"] == "CREATE_COMPLETE" and s["LogicalResourceId"]
    }
    # Everything but the types moto's CloudFormation lacks (and what names them) came from create_stack...
    assert by_create_stack == stack.active - set(stack.made_by_api)
    assert {cfn["Resources"][n]["Type"] for n in stack.made_by_api} == {
        *MADE_BY_API,
        "AWS::Lambda::Permission",
    }
    # ...and every resource of the template now exists.
    assert set(stack.physical) == stack.active
    # Only the optional notification resources are left out with the default parameters.
    assert {n for n, r in cfn["Resources"].items() if "Condition" in r} == set(
        cfn["Resources"]
    ) - stack.active


def test_queues_have_dead_letter_queues_and_long_enough_visibility(stack: DeployedStack) -> None:
    for queue, function in CONSUMERS.items():
        attrs = _queue(stack, queue)
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == stack.arn(DEAD_LETTER_QUEUES[queue])
        assert int(redrive["maxReceiveCount"]) >= MIN_MAX_RECEIVE_COUNT
        timeout = _function(stack, function)["Timeout"]
        window = _mapping(stack, queue).get("MaximumBatchingWindowInSeconds", 0)
        assert int(attrs["VisibilityTimeout"]) >= VISIBILITY_FACTOR * timeout + window, queue
        assert attrs["SqsManagedSseEnabled"] == "true"
    for dead_letter in set(DEAD_LETTER_QUEUES.values()):
        attrs = _queue(stack, dead_letter)
        assert int(attrs["MessageRetentionPeriod"]) == DLQ_RETENTION
        assert attrs["SqsManagedSseEnabled"] == "true"
    assert set(PIPELINE_QUEUES) <= set(CONSUMERS)


def test_table_keys_billing_recovery_and_ttl(stack: DeployedStack) -> None:
    ddb = boto3.client("dynamodb")
    name = stack.physical["ResultsTable"]
    table = ddb.describe_table(TableName=name)["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
        "pk": "S",
        "sk": "S",
        "status": "S",
        "created_at": "S",
        "manifest_uri": "S",
    }
    # The indexes the code queries (jobs.STATUS_INDEX, jobs.MANIFEST_INDEX), counters not projected.
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert {n: [k["AttributeName"] for k in i["KeySchema"]] for n, i in indexes.items()} == {
        STATUS_INDEX: ["status", "created_at"],
        MANIFEST_INDEX: ["manifest_uri", "created_at"],
    }
    for index in indexes.values():
        assert index["Projection"]["ProjectionType"] == "INCLUDE"
        assert not {"succeeded", "failed", "chunks_done", "updated_at"} & set(
            index["Projection"]["NonKeyAttributes"]
        )
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # (Encryption: moto's CloudFormation drops SSESpecification; test_template checks it.)
    backups = ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl == {"AttributeName": "expires_at", "TimeToLiveStatus": "ENABLED"}


def test_function_settings_parse_and_name_the_stack(stack: DeployedStack) -> None:
    for name, parse in CONFIG_PARSERS.items():
        env = _function(stack, name)["Environment"]["Variables"]
        config: Any = parse(env)  # a missing or malformed setting raises ConfigError
        assert env["POWERTOOLS_SERVICE_NAME"] == "batchpredict"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "batchpredict"
        assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
        assert "RESULT_TTL_DAYS" not in env  # results kept by default
        if hasattr(config, "tables"):
            assert config.tables.table == stack.physical["ResultsTable"]
            assert config.tables.ttl_seconds is None
            assert config.output_bucket == stack.physical["OutputBucket"]
            # (the sweeper sends no message)
            assert getattr(config, "finalize_queue_url", None) in (stack.physical["FinalizeQueue"], None)
        if hasattr(config, "predictor"):
            assert config.predictor.engine.model_uri == "/opt/model"  # the bundle baked into the image
    split = split_config(_function(stack, "SplitManifestFunction")["Environment"]["Variables"])
    assert split.work_queue_url == stack.physical["WorkQueue"]
    assert split.manifest_queue_url == stack.physical["ManifestQueue"]
    assert split.settings.chunk_size == 16
    # predict refills from the queue its chunks come from, while its fetches stall.
    predict = predict_config(_function(stack, "PredictFunction")["Environment"]["Variables"])
    assert predict.work_queue_url == stack.physical["WorkQueue"]
    # It budgets its refills in split's chunk size, and its heartbeat keeps the messages it works
    # on hidden for less than the work queue's visibility timeout.
    assert predict.chunk_size == split.settings.chunk_size == 16
    work_visibility = int(_queue(stack, "WorkQueue")["VisibilityTimeout"])
    assert predict.heartbeat_seconds == 30 < work_visibility
    # Each function gets the settings it reads and no others (predict_api touches no table,
    # nor any queue).
    api = _function(stack, "PredictApiFunction")["Environment"]["Variables"]
    assert not {"TABLE_NAME", "WORK_QUEUE_URL"} & set(api)


def test_function_sizes_and_roles(stack: DeployedStack) -> None:
    expected = {
        "SplitManifestFunction": (512, 300),
        "PredictFunction": (3538, 90),
        "FinalizeFunction": (512, 300),
        "ReconcileFunction": (512, 60),
        "PredictApiFunction": (1769, 29),
        "SweepFunction": (512, 60),
    }
    for name, (memory, timeout) in expected.items():
        config = _function(stack, name)
        assert (config["MemorySize"], config["Timeout"]) == (memory, timeout), name
        assert config["Role"].endswith("/" + stack.physical[name.replace("Function", "Role")])


def test_event_source_mappings(stack: DeployedStack) -> None:
    batch_sizes = {
        "ManifestQueue": 1,
        "WorkQueue": 8,
        "FinalizeQueue": 1,
        "WorkDeadLetterQueue": 10,
        "FinalizeDeadLetterQueue": 1,
        "ManifestDeadLetterQueue": 1,
    }
    for queue, function in CONSUMERS.items():
        mapping = _mapping(stack, queue)
        assert mapping["FunctionArn"] == stack.arn(function)
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert mapping["BatchSize"] == batch_sizes[queue], queue
        assert mapping["State"] == "Enabled"
    work = _mapping(stack, "WorkQueue")
    assert work["MaximumBatchingWindowInSeconds"] == 1
    assert work["ScalingConfig"] == {"MaximumConcurrency": 20}


def test_role_policies_name_only_this_stack(stack: DeployedStack) -> None:
    own = set(stack.physical.values()) | {stack.arn(q) for q in (*CONSUMERS, "FinalizeQueue")}
    own |= {stack.arn("ResultsTable")}
    for role in (
        "SplitManifestRole",
        "PredictRole",
        "FinalizeRole",
        "ReconcileRole",
        "PredictApiRole",
        "SweepRole",
    ):
        for statement in _role_policy(stack, role)["Statement"]:
            listed = statement["Resource"]
            for resource in [listed] if isinstance(listed, str) else listed:
                if resource == "*":
                    assert statement["Sid"] == "Tracing"
                    continue
                assert any(part in resource for part in own), (role, resource)


def test_buckets_block_public_access_encrypt_and_require_tls(stack: DeployedStack) -> None:
    s3 = boto3.client("s3")
    for name in ("InputBucket", "OutputBucket"):
        bucket = stack.physical[name]
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert block == dict.fromkeys(
            ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
        )
        (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
        (statement,) = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"]
        assert statement["Effect"] == "Deny" and statement["Condition"] == {
            "Bool": {"aws:SecureTransport": False}
        }
        assert set(statement["Resource"]) == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
        owner = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
        assert owner == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert s3.get_bucket_versioning(Bucket=stack.physical["InputBucket"])["Status"] == "Enabled"
    rules = s3.get_bucket_lifecycle_configuration(Bucket=stack.physical["OutputBucket"])["Rules"]
    assert [r["ID"] for r in rules] == ["abort-incomplete-merges"]  # no expiry by default


def test_a_manifest_upload_reaches_the_manifest_queue(stack: DeployedStack) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    policy = json.loads(_queue(stack, "ManifestQueue")["Policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == stack.arn("InputBucket")
    bucket, queue = stack.physical["InputBucket"], stack.physical["ManifestQueue"]
    with _bucket_policy_lifted(bucket), _mapping_paused(stack, "ManifestQueue"):
        s3.put_object(Bucket=bucket, Key="images/cat.jpg", Body=b"not a manifest")
        s3.put_object(Bucket=bucket, Key="manifests/photos.txt", Body=b"https://example.com/cat.jpg\n")
    deadline, keys = time.monotonic() + 10, []
    while time.monotonic() < deadline and not keys:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
            event = json.loads(message["Body"])
            keys += [unquote_plus(r["s3"]["object"]["key"]) for r in event.get("Records", [])]
    assert keys == ["manifests/photos.txt"]


def test_http_api_routes_and_permissions(stack: DeployedStack) -> None:
    apigw, lam = boto3.client("apigatewayv2"), boto3.client("lambda")
    api_id = stack.physical["PredictHttpApi"]
    routes = {r["RouteKey"]: r["Target"] for r in apigw.get_routes(ApiId=api_id)["Items"]}
    assert set(routes) == {"GET /predict", "POST /predict"}
    function_arn = stack.arn("PredictApiFunction")
    for target in routes.values():
        integration = apigw.get_integration(ApiId=api_id, IntegrationId=target.split("/")[1])
        assert function_arn in integration["IntegrationUri"]
        assert integration["PayloadFormatVersion"] == "2.0"
    stage = apigw.get_stage(ApiId=api_id, StageName="$default")
    assert stage["AutoDeploy"] is True
    for route in ("GET /predict", "POST /predict"):
        assert stage["RouteSettings"][route] == {"ThrottlingRateLimit": 5, "ThrottlingBurstLimit": 10}
    access_log = stage["AccessLogSettings"]["DestinationArn"]
    (group,) = boto3.client("logs").describe_log_groups(
        logGroupNamePrefix=stack.physical["PredictApiAccessLogGroup"]
    )["logGroups"]
    assert (access_log, group["retentionInDays"]) == (group["arn"], 30)
    policy = json.loads(lam.get_policy(FunctionName=stack.physical["PredictApiFunction"])["Policy"])
    arns = [s["Condition"]["ArnLike"]["AWS:SourceArn"] for s in policy["Statement"]]
    assert arns == [f"arn:aws:execute-api:us-east-1:123456789012:{api_id}/*/*/predict"]
    assert stack.outputs["PredictApiUrl"] == f"https://{api_id}.execute-api.us-east-1.amazonaws.com/predict"


def test_alarms_watch_the_deployed_queues_and_function(stack: DeployedStack, cfn: dict[str, Any]) -> None:
    alarms = boto3.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"{stack.name}-")["MetricAlarms"]
    topic = stack.physical["AlarmTopic"]
    watched = {(a["MetricName"], a["Dimensions"][0]["Value"]) for a in alarms}
    assert watched == {
        ("ApproximateNumberOfMessagesVisible", stack.physical[q].rsplit("/", 1)[1])
        for q in set(DEAD_LETTER_QUEUES.values())
    } | {("Errors", stack.physical[f]) for f in ("PredictFunction", "SweepFunction")}
    assert all(a["AlarmActions"] == [topic] for a in alarms)
    assert len(alarms) == len(resources(cfn, "AWS::CloudWatch::Alarm"))


def test_outputs_name_the_deployed_resources(stack: DeployedStack) -> None:
    outputs, physical = stack.outputs, stack.physical
    assert outputs["InputBucketName"] == physical["InputBucket"]
    assert outputs["ManifestPrefix"] == f"s3://{physical['InputBucket']}/manifests/"
    assert outputs["OutputBucketName"] == physical["OutputBucket"]
    assert outputs["ResultsTableName"] == physical["ResultsTable"]
    for queue in (*PIPELINE_QUEUES, *DEAD_LETTER_QUEUES.values()):
        assert outputs[f"{queue}Url"] == physical[queue]
    for function in CONFIG_PARSERS:
        assert outputs[f"{function}Name"] == physical[function]
    assert outputs["AlarmTopicArn"] == physical["AlarmTopic"]
    # moto computed every output it could itself, and agrees.
    assert {k: outputs[k] for k in stack.moto_outputs} == stack.moto_outputs


# --- the same template with its parameters changed ---------------------------------------------


def test_custom_parameters_reach_functions_mappings_and_buckets(custom_stack: DeployedStack) -> None:
    stack = custom_stack
    predict = _function(stack, "PredictFunction")
    assert predict["MemorySize"] == 5307
    env = predict["Environment"]["Variables"]
    config = predict_config(env)
    assert config.predictor.engine.model_uri == CUSTOM_PARAMETERS["ModelUri"]
    assert config.tables.ttl_seconds == 7 * 86_400
    assert env["POWERTOOLS_LOG_LEVEL"] == "DEBUG"
    assert (
        api_config(
            _function(stack, "PredictApiFunction")["Environment"]["Variables"]
        ).predictor.engine.model_uri
        == (CUSTOM_PARAMETERS["ModelUri"])
    )
    split = split_config(_function(stack, "SplitManifestFunction")["Environment"]["Variables"])
    assert split.settings.chunk_size == 8
    work = _mapping(stack, "WorkQueue")
    assert (work["BatchSize"], work["MaximumBatchingWindowInSeconds"]) == (4, 5)
    assert work["ScalingConfig"] == {"MaximumConcurrency": 50}
    rules = boto3.client("s3").get_bucket_lifecycle_configuration(Bucket=stack.physical["OutputBucket"])[
        "Rules"
    ]
    assert {r["ID"]: r.get("Expiration") for r in rules} == {
        "abort-incomplete-merges": None,
        "expire-results": {"Days": 7},
    }
    subscriptions = boto3.client("sns").list_subscriptions_by_topic(TopicArn=stack.physical["AlarmTopic"])
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions["Subscriptions"]] == [
        ("email", "ops@example.com")
    ]


SOURCES = {
    "PredictRole": ["arn:aws:s3:::photo-archive/2024/*", "arn:aws:s3:::more-photos/cats/*"],
    "PredictApiRole": ["arn:aws:s3:::more-photos/public/*"],
}


@pytest.mark.parametrize("role", ["PredictRole", "PredictApiRole"])
def test_custom_model_and_image_sources_are_readable(custom_stack: DeployedStack, role: str) -> None:
    statements = {s["Sid"]: s for s in _role_policy(custom_stack, role)["Statement"]}
    assert statements["ReadModelBundle"]["Action"] == "s3:GetObject"
    assert (
        statements["ReadModelBundle"]["Resource"] == "arn:aws:s3:::models-bucket/bundles/efficientnet-lite0/*"
    )
    # four grant slots, a shorter list repeated to fill them
    assert sorted(set(statements["ReadImageSources"]["Resource"])) == sorted(SOURCES[role])


@pytest.mark.parametrize("role", ["PredictRole", "PredictApiRole"])
def test_default_stack_reads_no_model_and_no_image_source(stack: DeployedStack, role: str) -> None:
    statements = _role_policy(stack, role)["Statement"]
    # Its own output bucket only: parts written, deferred lines read back (deferral.py).
    own = {"WriteParts", "ReadDeferredLines"}
    assert not [
        s for s in statements if any(a.startswith("s3:") for a in _actions(s)) and s["Sid"] not in own
    ]
    deferred = [s for s in statements if s["Sid"] == "ReadDeferredLines"]
    assert all(s["Resource"].endswith("/results/*/deferred/*") for s in deferred)


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def test_custom_functions_get_their_source_lists(custom_stack: DeployedStack) -> None:
    # (moto's ReimportApi ignores OpenAPI security: test_template checks the routes' authorizers)
    predict = predict_config(_function(custom_stack, "PredictFunction")["Environment"]["Variables"])
    assert predict.predictor.fetch.s3_prefixes == ("s3://photo-archive/2024/", "s3://more-photos/cats/")
    api = api_config(_function(custom_stack, "PredictApiFunction")["Environment"]["Variables"])
    assert api.predictor.fetch.s3_prefixes == ("s3://more-photos/public/",)
    assert api.predictor.fetch.total_timeout == 20
