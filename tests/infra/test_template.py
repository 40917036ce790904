"""The SAM template: cfn-lint, offline translation, and the pipeline's rules, each shown to
bite on a deliberately broken copy of the template."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from cfnlint.api import lint

from batchpredict import __version__
from batchpredict.config import ConfigError, deadline_settings, fetch_limits
from batchpredict.deadlines import DeadlineSettings
from batchpredict.local.template import Resolver, deadline_environment, parameter_defaults
from tests.infra.cfn import (
    HANDLERS,
    IMAGE_FUNCTIONS,
    INFRA,
    REGION,
    ROOT,
    TEMPLATE,
    ZIP_FUNCTIONS,
    getatt_target,
    iam_problems,
    mapping_problems,
    mappings_by_queue,
    policy_statements,
    queue_problems,
    resources,
    translate,
)

# The logical ids the local stack (and people reading the template) rely on.
LOGICAL_IDS = {
    "InputBucket": "AWS::S3::Bucket",
    "OutputBucket": "AWS::S3::Bucket",
    "ManifestQueue": "AWS::SQS::Queue",
    "ManifestDeadLetterQueue": "AWS::SQS::Queue",
    "WorkQueue": "AWS::SQS::Queue",
    "WorkDeadLetterQueue": "AWS::SQS::Queue",
    "ReconcileDeadLetterQueue": "AWS::SQS::Queue",
    "FinalizeQueue": "AWS::SQS::Queue",
    "FinalizeDeadLetterQueue": "AWS::SQS::Queue",
    "ResultsTable": "AWS::DynamoDB::Table",
    "SplitManifestFunction": "AWS::Serverless::Function",
    "PredictFunction": "AWS::Serverless::Function",
    "FinalizeFunction": "AWS::Serverless::Function",
    "ReconcileFunction": "AWS::Serverless::Function",
    "PredictApiFunction": "AWS::Serverless::Function",
    "PredictHttpApi": "AWS::Serverless::HttpApi",
}


def _lint(text: str) -> list[str]:
    return [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in lint(text, regions=[REGION])]


def test_cfn_lint_finds_nothing_in_the_template() -> None:
    assert _lint(TEMPLATE.read_text(encoding="utf-8")) == []


def test_cfn_lint_finds_nothing_in_the_translation(cfn: dict[str, Any]) -> None:
    assert _lint(json.dumps(cfn, indent=1)) == []


def test_translation_needs_no_network_and_no_credentials(
    sam: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access during translation: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    cfn = translate(sam)
    assert "AWS::Serverless::Function" not in {r["Type"] for r in cfn["Resources"].values()}
    assert len(resources(cfn, "AWS::Lambda::EventSourceMapping")) == 6


def test_the_logical_ids_are_the_documented_ones(sam: dict[str, Any]) -> None:
    assert {k: sam["Resources"][k]["Type"] for k in LOGICAL_IDS if k in sam["Resources"]} == LOGICAL_IDS


def test_the_template_keeps_every_rule(cfn: dict[str, Any]) -> None:
    assert queue_problems(cfn) == []
    assert mapping_problems(cfn) == []
    assert iam_problems(cfn) == []


# --- each rule fails on a broken template ------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _props(sam: dict[str, Any], name: str) -> dict[str, Any]:
    return sam["Resources"][name]["Properties"]  # type: ignore[no-any-return]


def _event(sam: dict[str, Any], function: str, queue: str | None = None) -> dict[str, Any]:
    """The function's SQS event (the one on ``queue`` when it has several)."""
    (event,) = [
        e
        for e in _props(sam, function)["Events"].values()
        if queue is None or e["Properties"]["Queue"]["Fn::GetAtt"][0] == queue
    ]
    return event["Properties"]  # type: ignore[no-any-return]


def _statements(sam: dict[str, Any], role: str) -> list[Any]:
    return _props(sam, role)["Policies"][0]["PolicyDocument"]["Statement"]  # type: ignore[no-any-return]


def _grant(role: str, action: Any, resource: Any) -> Mutation:
    return lambda sam: _statements(sam, role).append(
        {"Effect": "Allow", "Action": action, "Resource": resource}
    )


def _drop(name: str, key: str) -> Mutation:
    """The resource ``name`` loses its property ``key``."""
    return lambda sam: _props(sam, name).pop(key)


def _set(name: str, **values: Any) -> Mutation:
    return lambda sam: _props(sam, name).update(values)


QUEUE_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    **{
        f"{queue} loses its DLQ": (
            _drop(queue, "RedrivePolicy"),
            f"{queue}: consumed by a function but has no dead-letter queue",
        )
        for queue in (
            "ManifestQueue",
            "WorkQueue",
            "FinalizeQueue",
            "WorkDeadLetterQueue",
            "ManifestDeadLetterQueue",
        )
    },
    "too few receives": (
        lambda sam: _props(sam, "WorkQueue")["RedrivePolicy"].update(maxReceiveCount=3),
        "WorkQueue: maxReceiveCount 3 < 5",
    ),
    "visibility below timeout + window": (
        _set("WorkQueue", VisibilityTimeout=120),
        "WorkQueue: VisibilityTimeout 120 < PredictFunction's 90 s + 60 s window",
    ),
    "timeout raised, visibility not": (
        _set("FinalizeFunction", Timeout=600),
        "FinalizeQueue: VisibilityTimeout 300 < FinalizeFunction's 600 s + 0 s window",
    ),
    "DLQ alarm removed": (
        lambda sam: sam["Resources"].pop("WorkDeadLetterAlarm"),
        "WorkDeadLetterQueue: dead-letter queue without a depth alarm",
    ),
    "queue not encrypted": (
        _drop("FinalizeDeadLetterQueue", "SqsManagedSseEnabled"),
        "FinalizeDeadLetterQueue: not encrypted (SqsManagedSseEnabled)",
    ),
    "split no longer consumes the manifest queue": (
        _drop("SplitManifestFunction", "Events"),
        "ManifestQueue: no function consumes it",
    ),
}

MAPPING_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    **{
        f"{function} mapping loses ReportBatchItemFailures": (
            lambda sam, f=function, q=queue: _event(sam, f, q).pop("FunctionResponseTypes"),
            f"({queue}): FunctionResponseTypes is not [ReportBatchItemFailures]",
        )
        for function, queue in [
            ("SplitManifestFunction", "ManifestQueue"),
            ("PredictFunction", "WorkQueue"),
            ("FinalizeFunction", "FinalizeQueue"),
            ("ReconcileFunction", "WorkDeadLetterQueue"),
            ("ReconcileFunction", "FinalizeDeadLetterQueue"),
            ("ReconcileFunction", "ManifestDeadLetterQueue"),
        ]
    },
    "work mapping loses MaximumConcurrency": (
        lambda sam: _event(sam, "PredictFunction").pop("ScalingConfig"),
        "(WorkQueue): no ScalingConfig.MaximumConcurrency",
    ),
}

IAM_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    "service wildcard action": (
        _grant("PredictRole", "s3:*", {"Fn::Sub": "${OutputBucket.Arn}/*"}),
        "wildcard action 's3:*'",
    ),
    "prefix wildcard action": (
        _grant("FinalizeRole", ["dynamodb:Get*"], {"Fn::GetAtt": ["ResultsTable", "Arn"]}),
        "wildcard action 'dynamodb:Get*'",
    ),
    "every action": (_grant("SplitManifestRole", "*", "*"), "wildcard action '*'"),
    "table action on every resource": (
        _grant("ReconcileRole", "dynamodb:PutItem", "*"),
        "Resource '*' for ['dynamodb:PutItem']",
    ),
    "literal resource outside the stack": (
        _grant("PredictApiRole", "s3:GetObject", "arn:aws:s3:::*/*"),
        "resource 'arn:aws:s3:::*/*' not scoped",
    ),
    "managed policy": (
        _set("FinalizeRole", ManagedPolicyArns=["arn:aws:iam::aws:policy/AmazonS3FullAccess"]),
        "FinalizeRole: managed policies",
    ),
    "function without its own role (SAM adds managed policies)": (
        _drop("SplitManifestFunction", "Role"),
        "SplitManifestFunctionRole: managed policies",
    ),
    "wildcard hidden in a condition branch": (
        lambda sam: _statements(sam, "PredictRole").append(
            {
                "Fn::If": [
                    "ModelFromS3",
                    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                    {"Ref": "AWS::NoValue"},
                ]
            }
        ),
        "wildcard action 's3:*'",
    ),
}


def _broken(sam: dict[str, Any], mutation: Mutation) -> dict[str, Any]:
    broken = copy.deepcopy(sam)
    mutation(broken)
    return translate(broken)


# --- what moto cannot hold, checked on the translation -----------------------------------------


def test_functions_run_the_real_handlers_on_the_chosen_platforms(cfn: dict[str, Any]) -> None:
    functions = resources(cfn, "AWS::Lambda::Function")
    for name in ZIP_FUNCTIONS:
        props = functions[name]["Properties"]
        assert props["Runtime"] == "python3.11"
        assert props["Architectures"] == ["arm64"]
        assert props["Handler"] == HANDLERS[name]
        assert props["Code"]["S3Key"].endswith("arm64.zip")
    for name in IMAGE_FUNCTIONS:
        props = functions[name]["Properties"]
        assert props["PackageType"] == "Image"
        assert props["Architectures"] == ["x86_64"]  # MXNet 1.9.1 ships x86_64 Linux wheels only
        assert "Runtime" not in props and "Handler" not in props
        assert cfn["Resources"][name]["Metadata"] == {
            "DockerContext": "../build/package/image",
            "Dockerfile": "Dockerfile",
            "DockerTag": "python3.11",
        }
    # predict runs the image's CMD; predict_api overrides it.
    assert "ImageConfig" not in functions["PredictFunction"]["Properties"]
    assert functions["PredictApiFunction"]["Properties"]["ImageConfig"] == {
        "Command": [HANDLERS["PredictApiFunction"]]
    }
    for name, handler in HANDLERS.items():
        module, _, attr = handler.rpartition(".")
        assert callable(getattr(importlib.import_module(module), attr, None)), handler
        props = functions[name]["Properties"]
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["LoggingConfig"] == {"LogGroup": {"Ref": name.replace("Function", "LogGroup")}}
        assert props["Role"] == {"Fn::GetAtt": [name.replace("Function", "Role"), "Arn"]}


def test_code_locations_are_where_make_package_writes(sam: dict[str, Any]) -> None:
    for name in ZIP_FUNCTIONS:
        assert (INFRA / _props(sam, name)["CodeUri"]).resolve() == ROOT / "build" / "package" / "lambda"
    for name in IMAGE_FUNCTIONS:
        context = sam["Resources"][name]["Metadata"]["DockerContext"]
        assert (INFRA / context).resolve() == ROOT / "build" / "package" / "image"


def test_http_api_routes_get_and_post_predict_to_predict_api(cfn: dict[str, Any]) -> None:
    (api,) = resources(cfn, "AWS::ApiGatewayV2::Api").values()
    paths = api["Properties"]["Body"]["paths"]
    assert set(paths) == {"/predict"}
    assert set(paths["/predict"]) == {"get", "post"}
    for route in paths["/predict"].values():
        integration = route["x-amazon-apigateway-integration"]
        assert integration["type"] == "aws_proxy"
        assert integration["payloadFormatVersion"] == "2.0"  # APIGatewayHttpResolver's event
        assert "${PredictApiFunction.Arn}" in integration["uri"]["Fn::Sub"]
    permissions = resources(cfn, "AWS::Lambda::Permission")
    invokers = {
        (p["Properties"]["Principal"], p["Properties"]["FunctionName"]["Ref"]) for p in permissions.values()
    }
    # The API invokes predict_api; the only other invoker is the sweeper's schedule.
    assert invokers == {
        ("apigateway.amazonaws.com", "PredictApiFunction"),
        ("events.amazonaws.com", "SweepFunction"),
    }
    assert cfn["Outputs"]["PredictApiUrl"]["Value"]["Fn::Sub"].endswith("/predict")


def test_alarms_watch_every_dead_letter_queue_and_predict_errors(cfn: dict[str, Any]) -> None:
    alarms = resources(cfn, "AWS::CloudWatch::Alarm")
    watched = {
        (
            a["Properties"]["MetricName"],
            a["Properties"]["Dimensions"][0]["Value"].get("Fn::GetAtt", [None])[0],
        )
        for a in alarms.values()
        if a["Properties"]["Namespace"] == "AWS/SQS"
    }
    dead_letter_queues = {
        q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]
        for q in resources(cfn, "AWS::SQS::Queue").values()
        if "RedrivePolicy" in q["Properties"]
    }
    assert watched == {("ApproximateNumberOfMessagesVisible", q) for q in dead_letter_queues}
    assert len(dead_letter_queues) == 4
    errors = alarms["PredictErrorsAlarm"]["Properties"]
    assert (errors["Namespace"], errors["MetricName"]) == ("AWS/Lambda", "Errors")
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "PredictFunction"}}]
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]


def test_table_is_on_demand_encrypted_recoverable_and_kept(cfn: dict[str, Any]) -> None:
    table = cfn["Resources"]["ResultsTable"]
    props = table["Properties"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"] == {"SSEEnabled": True}  # moto's CloudFormation drops it
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")


def test_table_ttl_attribute_is_the_one_the_code_writes(cfn: dict[str, Any]) -> None:
    ttl = cfn["Resources"]["ResultsTable"]["Properties"]["TimeToLiveSpecification"]
    jobs_source = (ROOT / "functions" / "batchpredict" / "jobs.py").read_text(encoding="utf-8")
    assert ttl == {"AttributeName": "expires_at", "Enabled": True}
    assert '{"expires_at":' in jobs_source


def test_parameters_have_the_documented_defaults(cfn: dict[str, Any]) -> None:
    defaults = {k: p.get("Default") for k, p in cfn["Parameters"].items()}
    assert defaults == {
        "ModelUri": "",
        "ImageSourcePrefixes": "",
        "ContactUrl": "https://github.com/OPERATOR/batchpredict",
        "UserAgent": "",
        "RobotsTxt": "off",
        "ApiImageSourcePrefixes": "",
        "ApiAuth": "AWS_IAM",
        "ApiJwtIssuer": "",
        "ApiJwtAudience": "",
        "ApiReservedConcurrency": 5,
        "ApiRateLimit": 5,
        "ApiBurstLimit": 10,
        "ChunkSize": 16,
        "WorkBatchSize": 8,
        "WorkBatchingWindowSeconds": 1,
        "PredictMaxConcurrency": 20,
        "HostRps": 10,
        "HostConcurrency": 8,
        "DeferBudgetSeconds": 3600,
        "SplitMemorySize": 512,
        "PredictMemorySize": 3538,
        "FinalizeMemorySize": 512,
        "PredictApiMemorySize": 1769,
        "ResultRetentionDays": 0,
        "LogRetentionDays": 30,
        "LogLevel": "INFO",
        "AlarmEmail": "",
        "NotificationEmail": "",
        "WebhookUrl": "",
        "WebhookApiKeyHeader": "x-api-key",
        "WebhookApiKey": "unset",
    }
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Deploying to AWS") :]
    for name, default in defaults.items():
        shown = f"`{default}`" if default != "" else "empty"
        assert re.search(rf"\| `{name}` \| {re.escape(shown)} \|", section), f"README: {name} {shown}"


def _grants(cfn: dict[str, Any], role: str) -> dict[str, set[str]]:
    """Action -> the logical ids of the resources a role grants it on."""
    out: dict[str, set[str]] = {}
    for where, statement in policy_statements(cfn):
        if where.startswith(f"{role}/"):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources_ = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            targets = {json.dumps(r) for r in resources_}
            for action in actions:
                out.setdefault(action, set()).update(targets)
    return out


def test_a_merge_can_continue_resume_and_end_failed(cfn: dict[str, Any]) -> None:
    # The output bucket aborts uploads no finalize will complete.
    rules = cfn["Resources"]["OutputBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    (abort,) = [r for r in rules if isinstance(r, dict) and "AbortIncompleteMultipartUpload" in r]
    assert abort["Status"] == "Enabled" and "Prefix" not in abort and "Filter" not in abort
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    # finalize sends its own continuation, checkpoints in the table, reads and completes uploads.
    finalize = _grants(cfn, "FinalizeRole")
    assert json.dumps({"Fn::GetAtt": ["FinalizeQueue", "Arn"]}) in finalize["sqs:SendMessage"]
    assert json.dumps({"Fn::GetAtt": ["ResultsTable", "Arn"]}) in finalize["dynamodb:PutItem"]
    assert {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"} <= set(finalize)
    # A dead-lettered finalize message is consumed (by reconcile), which may abort the upload.
    _, mapping = mappings_by_queue(cfn)["FinalizeDeadLetterQueue"]
    assert mapping["FunctionName"] == {"Ref": "ReconcileFunction"}
    reconcile = _grants(cfn, "ReconcileRole")
    assert json.dumps({"Fn::GetAtt": ["FinalizeDeadLetterQueue", "Arn"]}) in reconcile["sqs:ReceiveMessage"]
    assert "s3:AbortMultipartUpload" in reconcile


# --- security: who may call the API, what it may cost, what the predictor may read ---------------


def _resolver(cfn: dict[str, Any], **parameters: str) -> Resolver:
    """Intrinsics evaluated as CloudFormation would with these parameters (the rest default)."""
    physical = {name: name.lower() for name in cfn["Resources"]}
    pseudo = {
        "AWS::Region": REGION,
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
        "AWS::StackName": "bp",
        "AWS::URLSuffix": "amazonaws.com",
    }

    def attribute(name: str, attr: str) -> str:
        return f"arn:aws:{cfn['Resources'][name]['Type'].split('::')[1].lower()}:::{name.lower()}"

    return Resolver(cfn, parameter_defaults(cfn) | parameters, pseudo, physical, attribute)


def api_problems(cfn: dict[str, Any], **parameters: str) -> list[str]:
    """Every route authorized unless ApiAuth is NONE by name; reserved concurrency; throttled
    routes; access logs kept for a while; the API's fetch deadline inside its timeout."""
    resolve = _resolver(cfn, **parameters)
    public = resolve({"Ref": "ApiAuth"}) == "NONE"
    problems = []
    (api,) = resources(cfn, "AWS::ApiGatewayV2::Api").values()
    body = resolve(api["Properties"]["Body"])
    schemes = body.get("components", {}).get("securitySchemes", {})
    for path, methods in body["paths"].items():
        for method, route in methods.items():
            security = route.get("security")
            if not security and not public:
                problems.append(f"{method.upper()} {path}: no authorization, and ApiAuth is not NONE")
            for requirement in security or []:
                for name in requirement:
                    if name not in schemes:
                        problems.append(f"{method.upper()} {path}: unknown security scheme {name}")
    (stage,) = resources(cfn, "AWS::ApiGatewayV2::Stage").values()
    settings = resolve(stage["Properties"])
    for route in ("GET /predict", "POST /predict"):
        throttle = settings.get("RouteSettings", {}).get(route, {})
        if not {"ThrottlingRateLimit", "ThrottlingBurstLimit"} <= set(throttle):
            problems.append(f"{route}: no throttle of its own")
    destination = stage["Properties"].get("AccessLogSettings", {}).get("DestinationArn")
    group = getatt_target(destination) if destination else None
    if group is None or "RetentionInDays" not in cfn["Resources"][group]["Properties"]:
        problems.append("API stage: no access log group with a retention")
    function = cfn["Resources"]["PredictApiFunction"]["Properties"]
    if "ReservedConcurrentExecutions" not in function:
        problems.append("PredictApiFunction: no reserved concurrency")
    fetch = float(resolve(function["Environment"]["Variables"]).get("FETCH_TOTAL_TIMEOUT", 30))
    if fetch + API_TIMEOUT_MARGIN > function["Timeout"]:
        timeout = function["Timeout"]
        problems.append(
            f"PredictApiFunction: FETCH_TOTAL_TIMEOUT {fetch:g} s + {API_TIMEOUT_MARGIN} s > its {timeout} s"
        )
    return problems


API_TIMEOUT_MARGIN = 5  # decode, inference and the reply after the last byte arrives


def _api_body(sam: dict[str, Any]) -> dict[str, Any]:
    return _props(sam, "PredictHttpApi")["DefinitionBody"]  # type: ignore[no-any-return]


API_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    "a route loses its authorization": (
        lambda sam: _api_body(sam)["paths"]["/predict"]["post"].pop("security"),
        "POST /predict: no authorization, and ApiAuth is not NONE",
    ),
    "public by default": (
        lambda sam: _api_body(sam)["paths"]["/predict"]["get"].update(security=[]),
        "GET /predict: no authorization",
    ),
    "no reserved concurrency": (
        _drop("PredictApiFunction", "ReservedConcurrentExecutions"),
        "PredictApiFunction: no reserved concurrency",
    ),
    "stage-wide throttle only": (
        _drop("PredictHttpApi", "RouteSettings"),
        "GET /predict: no throttle of its own",
    ),
    "no access logs": (_drop("PredictHttpApi", "AccessLogSettings"), "API stage: no access log group"),
    "fetch deadline past the timeout": (
        lambda sam: _props(sam, "PredictApiFunction")["Environment"]["Variables"].update(
            FETCH_TOTAL_TIMEOUT="30"
        ),
        "FETCH_TOTAL_TIMEOUT 30 s + 5 s > its 29 s",
    ),
}


def test_the_api_is_authorized_limited_and_logged(cfn: dict[str, Any]) -> None:
    for auth in ("AWS_IAM", "JWT", "NONE"):
        assert api_problems(cfn, ApiAuth=auth) == [], auth


# --- job deadlines: what the sweeper allows a job is at least what the stack lets it take ------

# Jobs of these many chunks: empty, one, a wave of 160, one more, the largest (1M lines of 16).
DEADLINE_SIZES = (0, 1, 160, 161, 62_500)
DEADLINE_PARAMETERS = {
    "WORK_BATCH_SIZE": "WorkBatchSize",
    "PREDICT_MAX_CONCURRENCY": "PredictMaxConcurrency",
    "DEFER_BUDGET_SECONDS": "DeferBudgetSeconds",
}


def template_deadlines(cfn: dict[str, Any], **parameters: str) -> DeadlineSettings:
    """What the template's timeouts, visibility timeouts and receive counts let a job take."""
    queues = resources(cfn, "AWS::SQS::Queue")
    timeouts = {
        n: float(f["Properties"]["Timeout"]) for n, f in resources(cfn, "AWS::Lambda::Function").items()
    }
    visibility = {n: float(q["Properties"].get("VisibilityTimeout", 30)) for n, q in queues.items()}
    receives = {
        n: int(q["Properties"]["RedrivePolicy"]["maxReceiveCount"])
        for n, q in queues.items()
        if "RedrivePolicy" in q["Properties"]
    }
    resolve = _resolver(cfn, **parameters)
    shape = {env: str(resolve({"Ref": parameter})) for env, parameter in DEADLINE_PARAMETERS.items()}
    return deadline_settings(deadline_environment(timeouts, visibility, receives) | shape)


def deadline_problems(cfn: dict[str, Any]) -> list[str]:
    """The deadline split and sweep give a job (deadlines.DeadlineSettings' defaults, shaped by
    the two parameters they are passed) is never shorter than what the template's timeouts and
    retries let it legitimately take: at the parameters' defaults and at their smallest."""
    problems = []
    for function in ("SplitManifestFunction", "SweepFunction"):
        env = cfn["Resources"][function]["Properties"]["Environment"]["Variables"]
        for name, parameter in DEADLINE_PARAMETERS.items():
            if env.get(name) != {"Ref": parameter}:
                problems.append(f"{function}: {name} is not the {parameter} parameter")
    smallest = {p: str(cfn["Parameters"][p]["MinValue"]) for p in DEADLINE_PARAMETERS.values()}
    for parameters in ({}, smallest):
        theirs = template_deadlines(cfn, **parameters)
        shape = {env: str(_resolver(cfn, **parameters)({"Ref": p})) for env, p in DEADLINE_PARAMETERS.items()}
        ours = deadline_settings(shape)
        if ours.split_seconds < theirs.split_seconds:
            problems.append(
                f"a split gets {ours.split_seconds:g} s, the template lets it take {theirs.split_seconds:g} s"
            )
        for chunks in DEADLINE_SIZES:
            if ours.run_seconds(chunks) < theirs.run_seconds(chunks):
                problems.append(
                    f"{chunks} chunks get {ours.run_seconds(chunks):g} s, "
                    f"the template lets them take {theirs.run_seconds(chunks):g} s {parameters or ''}"
                )
    return problems


DEADLINE_BREAKAGES: dict[str, tuple[Mutation, str]] = {
    "predict's timeout raised, deadlines not": (
        _set("PredictFunction", Timeout=900),
        "1 chunks get",
    ),
    "finalize's retries lengthened, deadlines not": (
        _set("FinalizeQueue", VisibilityTimeout=43_200),
        "0 chunks get",
    ),
    "the manifest queue's retries lengthened, deadlines not": (
        lambda sam: _props(sam, "ManifestQueue")["RedrivePolicy"].update(maxReceiveCount=50),
        "a split gets",
    ),
    "split no longer told the concurrency": (
        lambda sam: _props(sam, "SplitManifestFunction")["Environment"]["Variables"].pop(
            "PREDICT_MAX_CONCURRENCY"
        ),
        "SplitManifestFunction: PREDICT_MAX_CONCURRENCY is not the PredictMaxConcurrency parameter",
    ),
}


def test_a_jobs_deadline_covers_what_the_stack_lets_it_take(cfn: dict[str, Any]) -> None:
    assert deadline_problems(cfn) == []


RULES: dict[Callable[[dict[str, Any]], list[str]], dict[str, tuple[Mutation, str]]] = {
    queue_problems: QUEUE_BREAKAGES,
    mapping_problems: MAPPING_BREAKAGES,
    iam_problems: IAM_BREAKAGES,
    api_problems: API_BREAKAGES,
    deadline_problems: DEADLINE_BREAKAGES,
}


@pytest.mark.parametrize(
    ("problems_of", "mutation", "expected"),
    [
        pytest.param(problems_of, mutation, expected, id=f"{problems_of.__name__}: {case}")
        for problems_of, breakages in RULES.items()
        for case, (mutation, expected) in breakages.items()
    ],
)
def test_each_rule_catches_its_breakage(
    problems_of: Callable[[dict[str, Any]], list[str]],
    mutation: Mutation,
    expected: str,
    sam: dict[str, Any],
    cfn: dict[str, Any],  # the translation's environment (aws_env)
) -> None:
    problems = problems_of(_broken(sam, mutation))
    assert any(expected in p for p in problems), problems


def _route_security(cfn: dict[str, Any], **parameters: str) -> tuple[Any, dict[str, Any]]:
    (api,) = resources(cfn, "AWS::ApiGatewayV2::Api").values()
    body = _resolver(cfn, **parameters)(api["Properties"]["Body"])
    securities = [route["security"] for route in body["paths"]["/predict"].values()]
    assert all(security == securities[0] for security in securities)
    return securities[0], body["components"]["securitySchemes"]


def test_iam_is_the_default_authorizer_and_none_must_be_named(cfn: dict[str, Any]) -> None:
    security, schemes = _route_security(cfn)
    assert security == [{"sigv4": []}]
    assert schemes["sigv4"]["x-amazon-apigateway-authtype"] == "awsSigv4"
    assert "Jwt" not in schemes
    issuer = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_pool"
    security, schemes = _route_security(cfn, ApiAuth="JWT", ApiJwtIssuer=issuer, ApiJwtAudience="app1,app2")
    assert security == [{"Jwt": []}]
    authorizer = schemes["Jwt"]["x-amazon-apigateway-authorizer"]
    assert authorizer["type"] == "jwt"
    assert authorizer["jwtConfiguration"] == {"issuer": issuer, "audience": ["app1", "app2"]}
    assert _route_security(cfn, ApiAuth="NONE")[0] == []
    assert cfn["Parameters"]["ApiAuth"]["AllowedValues"] == ["AWS_IAM", "JWT", "NONE"]


def test_the_api_function_may_only_be_invoked_by_this_api(cfn: dict[str, Any]) -> None:
    (permission,) = [
        p
        for p in resources(cfn, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Ref": "PredictApiFunction"}
    ]
    arn = _resolver(cfn)(permission["Properties"]["SourceArn"])
    assert arn == "arn:aws:execute-api:us-east-1:123456789012:predicthttpapi/*/*/predict"


PREDICTOR_ROLES = ("PredictRole", "PredictApiRole")


def _s3_grants(cfn: dict[str, Any], role: str, **parameters: str) -> dict[str, set[str]]:
    """Action -> the S3 resources the role gets it on, with these parameters."""
    policies = _resolver(cfn, **parameters)(cfn["Resources"][role]["Properties"]["Policies"])
    grants: dict[str, set[str]] = {}
    for policy in policies:
        for statement in _listed(policy["PolicyDocument"]["Statement"]):
            if statement.get("Effect") != "Allow":
                continue
            for action in _listed(statement["Action"]):
                if action.startswith("s3:"):
                    grants.setdefault(action, set()).update(_listed(statement["Resource"]))
    return grants


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


DEFERRED_LINES = "arn:aws:s3:::outputbucket/results/*/deferred/*"


def test_the_predictors_read_only_the_listed_prefixes_and_the_model(cfn: dict[str, Any]) -> None:
    parameters = {
        "ImageSourcePrefixes": "s3://photos/cats/,s3://other-bucket/birds/,s3://photos/dogs/2024/",
        "ApiImageSourcePrefixes": "s3://photos/public/",
        "ModelUri": "s3://models-bucket/effnet/v1/",
    }
    predict = _s3_grants(cfn, "PredictRole", **parameters)
    assert predict["s3:GetObject"] == {
        "arn:aws:s3:::photos/cats/*",
        "arn:aws:s3:::other-bucket/birds/*",
        "arn:aws:s3:::photos/dogs/2024/*",
        "arn:aws:s3:::models-bucket/effnet/v1/*",
        DEFERRED_LINES,  # its own output: the lines a deferred chunk finished (deferral.py)
    }
    api = _s3_grants(cfn, "PredictApiRole", **parameters)
    assert api == {"s3:GetObject": {"arn:aws:s3:::photos/public/*", "arn:aws:s3:::models-bucket/effnet/v1/*"}}
    for role in PREDICTOR_ROLES:
        grants = _s3_grants(cfn, role)  # the defaults: no image source, the model in the image
        assert grants.get("s3:GetObject", set()) <= {DEFERRED_LINES}, role
        assert "s3:ListBucket" not in _s3_grants(cfn, role, **parameters), role  # nothing to probe keys with
    # the environment carries the same lists, for fetch.py's own check
    functions = {
        name: _resolver(cfn, **parameters)(cfn["Resources"][name]["Properties"]) for name in IMAGE_FUNCTIONS
    }
    assert (
        functions["PredictFunction"]["Environment"]["Variables"]["IMAGE_SOURCE_PREFIXES"]
        == parameters["ImageSourcePrefixes"]
    )
    assert (
        functions["PredictApiFunction"]["Environment"]["Variables"]["IMAGE_SOURCE_PREFIXES"]
        == "s3://photos/public/"
    )


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("ModelUri", "s3://models-bucket/effnet/v1/", True),
        ("ModelUri", "s3://models-bucket/effnet/v1", False),  # would also open effnet/v1-other/
        ("ModelUri", "s3://models-bucket/", False),  # would grant the whole bucket
        ("ImageSourcePrefixes", "s3://photos/cats/", True),
        ("ImageSourcePrefixes", "s3://photos/cats", False),
        ("ImageSourcePrefixes", "s3://photos/cats/,s3://photos/dogs", False),
        ("ImageSourcePrefixes", "s3://photos/*/", False),
        ("ImageSourcePrefixes", "s3://b01/a/,s3://b02/b/,s3://b03/c/,s3://b04/d/", True),
        ("ImageSourcePrefixes", ",".join(f"s3://b0{i}/p/" for i in range(1, 6)), False),  # 4 grant slots
        ("ApiImageSourcePrefixes", "s3://photos/public", False),
    ],
)
def test_prefix_parameters_force_a_trailing_slash(
    name: str, value: str, accepted: bool, cfn: dict[str, Any]
) -> None:
    pattern = cfn["Parameters"][name]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, value)) is accepted


PREFIX_PARAMETERS = ("ModelUri", "ImageSourcePrefixes", "ApiImageSourcePrefixes")
# A whole bucket (no prefix, an empty one, an empty segment) or a prefix without its slash.
BAD_PREFIXES = ("s3://bucket/", "s3://bucket//", "s3://bucket", "s3://bucket/x", "s3://bucket/x//")
GOOD_PREFIXES = ("s3://b01/cats/", "s3://b02/dogs/2024/", "s3://b03/x/", "s3://b04/a.b-c d/e/")


@pytest.mark.parametrize("name", PREFIX_PARAMETERS)
def test_prefix_parameters_need_a_non_empty_prefix_in_every_slot(name: str, cfn: dict[str, Any]) -> None:
    pattern = cfn["Parameters"][name]["AllowedPattern"]
    assert re.fullmatch(pattern, "")  # empty stays allowed: the bundle in the image, no s3:// images
    slots = 1 if name == "ModelUri" else len(GOOD_PREFIXES)
    for count in range(1, slots + 1):
        good = list(GOOD_PREFIXES[:count])
        assert re.fullmatch(pattern, ",".join(good)), good
        for slot in range(count):
            for bad in BAD_PREFIXES:
                value = ",".join([*good[:slot], bad, *good[slot + 1 :]])
                assert not re.fullmatch(pattern, value), value


def _role_statements(cfn: dict[str, Any], role: str) -> list[dict[str, Any]]:
    policies = cfn["Resources"][role]["Properties"].get("Policies", [])
    found = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
    return [s for s in found if "Action" in s]  # (Fn::If branches hold no events action)


def test_table_indexes_are_the_ones_the_code_queries(cfn: dict[str, Any]) -> None:
    from batchpredict.jobs import MANIFEST_INDEX, STATUS_INDEX

    table = cfn["Resources"]["ResultsTable"]["Properties"]
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert {n: [k["AttributeName"] for k in i["KeySchema"]] for n, i in indexes.items()} == {
        STATUS_INDEX: ["status", "created_at"],
        MANIFEST_INDEX: ["manifest_uri", "created_at"],
    }
    # No counter is projected, so counting a chunk never writes to an index.
    for index in indexes.values():
        assert not {"succeeded", "failed", "chunks_done", "updated_at"} & set(
            index["Projection"]["NonKeyAttributes"]
        )


def test_job_events_go_to_the_stacks_bus_and_only_there(cfn: dict[str, Any]) -> None:
    bus_arn = {"Fn::GetAtt": ["JobEventBus", "Arn"]}
    assert cfn["Resources"]["JobEventBus"]["Type"] == "AWS::Events::EventBus"
    putters = {}
    for name in resources(cfn, "AWS::IAM::Role"):
        for statement in _role_statements(cfn, name):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            if any(a.startswith("events:Put") or a == "events:*" for a in actions):
                putters[name] = statement
    # split and finalize end jobs; reconcile too (a dead-lettered split or merge fails its job),
    # and the sweeper (a job past its deadline).
    assert set(putters) == {"SplitManifestRole", "FinalizeRole", "ReconcileRole", "SweepRole"}
    for statement in putters.values():
        assert (statement["Action"], statement["Resource"], statement["Effect"]) == (
            "events:PutEvents",
            bus_arn,
            "Allow",
        )
    for function in ("SplitManifestFunction", "FinalizeFunction", "ReconcileFunction", "SweepFunction"):
        env = cfn["Resources"][function]["Properties"]["Environment"]["Variables"]
        assert env["EVENT_BUS_NAME"] == {"Ref": "JobEventBus"}


def test_notification_email_is_an_sns_topic_fed_by_a_rule_for_jobs_that_ask(cfn: dict[str, Any]) -> None:
    r = cfn["Resources"]
    topic, rule, policy = r["JobNotificationTopic"], r["JobEmailRule"], r["JobNotificationTopicPolicy"]
    assert {topic["Condition"], rule["Condition"], policy["Condition"]} == {"HasNotificationEmail"}
    assert topic["Properties"]["Subscription"] == [
        {"Protocol": "email", "Endpoint": {"Ref": "NotificationEmail"}}
    ]
    props = rule["Properties"]
    assert props["EventBusName"] == {"Ref": "JobEventBus"}
    assert props["EventPattern"] == {
        "source": ["batchpredict"],
        "detail-type": ["Batchpredict Job State Change"],
        "detail": {"notify": ["email"]},
    }
    assert [t["Arn"] for t in props["Targets"]] == [{"Ref": "JobNotificationTopic"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert (
        statement["Principal"] == {"Service": "events.amazonaws.com"} and statement["Action"] == "sns:Publish"
    )
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["JobEmailRule", "Arn"]}}}


def test_the_webhook_is_an_api_destination_fed_by_a_rule(cfn: dict[str, Any]) -> None:
    from batchpredict.events import DETAIL_TYPE, SOURCE

    r = cfn["Resources"]
    names = ("WebhookConnection", "WebhookDestination", "WebhookRole", "WebhookRule")
    assert {r[n]["Condition"] for n in names} == {"HasWebhook"}
    destination = r["WebhookDestination"]["Properties"]
    assert destination["InvocationEndpoint"] == {"Ref": "WebhookUrl"} and destination["HttpMethod"] == "POST"
    assert destination["ConnectionArn"] == {"Fn::GetAtt": ["WebhookConnection", "Arn"]}
    rule = r["WebhookRule"]["Properties"]
    assert rule["EventPattern"] == {"source": [SOURCE], "detail-type": [DETAIL_TYPE]}
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": ["WebhookDestination", "Arn"]}
    assert target["RoleArn"] == {"Fn::GetAtt": ["WebhookRole", "Arn"]}
    (statement,) = _role_statements(cfn, "WebhookRole")
    assert (statement["Action"], statement["Resource"]) == (
        "events:InvokeApiDestination",
        {"Fn::GetAtt": ["WebhookDestination", "Arn"]},
    )


def test_the_sweeper_runs_every_minute_with_least_privilege(cfn: dict[str, Any]) -> None:
    from batchpredict.jobs import STATUS_INDEX

    (rule,) = [
        r["Properties"]
        for r in resources(cfn, "AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": ["SweepFunction", "Arn"]}]
    (permission,) = [
        p["Properties"]
        for p in resources(cfn, "AWS::Lambda::Permission").values()
        if p["Properties"]["FunctionName"] == {"Ref": "SweepFunction"}
    ]
    assert permission["Principal"] == "events.amazonaws.com"
    assert getatt_target(permission["SourceArn"]) in resources(cfn, "AWS::Events::Rule")
    # Exactly the calls sweep.py makes: the open jobs from the status index (Query, never Scan),
    # their JOB records and shards (BatchGetItem), the conditional ending and the event's mark
    # (UpdateItem), the summary, the event.
    table, index = (
        {"Fn::GetAtt": ["ResultsTable", "Arn"]},
        {"Fn::Sub": f"${{ResultsTable.Arn}}/index/{STATUS_INDEX}"},
    )
    grants = _grants(cfn, "SweepRole")
    assert {a: r for a, r in grants.items() if not a.startswith(("logs:", "xray:"))} == {
        "dynamodb:Query": {json.dumps(index)},
        "dynamodb:BatchGetItem": {json.dumps(table)},
        "dynamodb:UpdateItem": {json.dumps(table)},
        "s3:PutObject": {json.dumps({"Fn::Sub": "${OutputBucket.Arn}/results/*"})},
        "events:PutEvents": {json.dumps({"Fn::GetAtt": ["JobEventBus", "Arn"]})},
    }
    env = cfn["Resources"]["SweepFunction"]["Properties"]["Environment"]["Variables"]
    assert {k: env[k] for k in ("TABLE_NAME", "OUTPUT_BUCKET")} == {
        "TABLE_NAME": {"Ref": "ResultsTable"},
        "OUTPUT_BUCKET": {"Ref": "OutputBucket"},
    }
    errors = cfn["Resources"]["SweepErrorsAlarm"]["Properties"]
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "SweepFunction"}}]


def test_a_dead_lettered_manifest_message_is_consumed_by_reconcile(cfn: dict[str, Any]) -> None:
    _, mapping = mappings_by_queue(cfn)["ManifestDeadLetterQueue"]
    assert mapping["FunctionName"] == {"Ref": "ReconcileFunction"}
    assert mapping["BatchSize"] == 1
    reconcile = _grants(cfn, "ReconcileRole")
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage"):
        assert json.dumps({"Fn::GetAtt": ["ManifestDeadLetterQueue", "Arn"]}) in reconcile[action]
    # A job never created (split died before its first write) is created FAILED: a transaction
    # of puts (TransactWriteItems is authorized by the actions of its items).
    assert "dynamodb:PutItem" in reconcile and "dynamodb:UpdateItem" in reconcile
    redrive = cfn["Resources"]["ManifestDeadLetterQueue"]["Properties"]["RedrivePolicy"]
    assert getatt_target(redrive["deadLetterTargetArn"]) == "ReconcileDeadLetterQueue"


# --- who the fetcher says it is, and what it respects ------------------------------------------

IDENTITY_SETTINGS = {"CONTACT_URL": "ContactUrl", "USER_AGENT": "UserAgent", "ROBOTS_TXT": "RobotsTxt"}


@pytest.mark.parametrize(
    ("parameters", "user_agent", "robots_txt"),
    [
        ({}, f"batchpredict/{__version__} (+https://github.com/OPERATOR/batchpredict)", False),
        (
            {"ContactUrl": "https://example.org/bot"},
            f"batchpredict/{__version__} (+https://example.org/bot)",
            False,
        ),
        (
            {"UserAgent": "acmebot/2.1 (+https://acme.test/bot)", "RobotsTxt": "on"},
            "acmebot/2.1 (+https://acme.test/bot)",
            True,
        ),
    ],
)
def test_both_fetching_functions_identify_as_the_parameters_say(
    parameters: dict[str, str], user_agent: str, robots_txt: bool, cfn: dict[str, Any]
) -> None:
    for name in IMAGE_FUNCTIONS:
        variables = cfn["Resources"][name]["Properties"]["Environment"]["Variables"]
        assert {k: variables.get(k) for k in IDENTITY_SETTINGS} == {
            k: {"Ref": p} for k, p in IDENTITY_SETTINGS.items()
        }, name
        env = _resolver(cfn, **parameters)(variables)
        limits = fetch_limits({k: str(v) for k, v in env.items()})
        assert (limits.user_agent, limits.robots_txt) == (user_agent, robots_txt), name


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("UserAgent", "", True),
        ("UserAgent", "acmebot/2.1 (+https://acme.test/bot)", True),
        ("UserAgent", "acmebot", True),
        ("UserAgent", "(acmebot) 2.1", False),  # no product token first
        ("UserAgent", "acmebot/2.1 \u00e9", False),  # not ASCII
        ("UserAgent", "acmebot/2.1\r\nX-Evil: 1", False),  # no header injection
        ("ContactUrl", "https://example.org/bot", True),
        ("ContactUrl", "mailto:bot@example.org", False),
        ("ContactUrl", "https://example.org/a b", False),
        ("RobotsTxt", "on", True),
        ("RobotsTxt", "yes", False),
    ],
)
def test_identity_parameters_take_only_what_the_settings_take(
    name: str, value: str, accepted: bool, cfn: dict[str, Any]
) -> None:
    parameter = cfn["Parameters"][name]
    in_template = (
        value in parameter["AllowedValues"]
        if "AllowedValues" in parameter
        else bool(re.fullmatch(parameter["AllowedPattern"], value))
        and len(value) <= parameter.get("MaxLength", 256)
    )
    assert in_template is accepted
    setting = {"UserAgent": "USER_AGENT", "ContactUrl": "CONTACT_URL", "RobotsTxt": "ROBOTS_TXT"}[name]
    try:
        fetch_limits({setting: value})
    except ConfigError:
        assert not accepted
    else:
        assert accepted
