"""The SAM template, translated offline, and the rules every version of it must keep.

Translation uses aws-sam-translator with no credentials and no network: the managed-policy
loader is a stub (the template attaches no managed policy; each function has its own role),
and the artefacts ``sam build``/``sam deploy`` would upload are replaced by placeholders.

The ``*_problems`` checkers return human-readable findings (empty = fine). The tests run them
on the real template and on deliberately broken copies, so a check that stopped biting fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchpredict.local.template import ARTIFACT_BUCKET as ARTIFACT_BUCKET
from batchpredict.local.template import ARTIFACT_KEY as ARTIFACT_KEY
from batchpredict.local.template import IMAGE_URI as IMAGE_URI
from batchpredict.local.template import TEMPLATE as TEMPLATE
from batchpredict.local.template import load_sam as load_sam
from batchpredict.local.template import resources as resources
from batchpredict.local.template import translate as translate
from batchpredict.local.template import with_artifacts as with_artifacts

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infrastructure"
REGION = "us-east-1"


MIN_MAX_RECEIVE_COUNT = 5
# A consumed queue's visibility timeout >= its consumer's timeout (Lambda refuses a mapping below
# it) + the batching window, so an invocation never outlives its messages' visibility. The 6x AWS
# advises for throttled retries is the template's choice per queue (see its header).
VISIBILITY_FACTOR = 1
DLQ_RETENTION = 14 * 24 * 3600

# The only actions granted on Resource "*": X-Ray's write calls have no resource-level
# permissions (AWS requires "*"). Metrics need no cloudwatch:PutMetricData: Powertools
# writes them as EMF log lines, which the Logs statement already covers.
STAR_RESOURCE_ALLOWED = frozenset({"xray:PutTraceSegments", "xray:PutTelemetryRecords"})

# The handler module each function must run (a test checks each module exists).
HANDLERS = {
    "SplitManifestFunction": "batchpredict.handlers.split_manifest.lambda_handler",
    "PredictFunction": "batchpredict.handlers.predict.lambda_handler",
    "FinalizeFunction": "batchpredict.handlers.finalize.lambda_handler",
    "ReconcileFunction": "batchpredict.handlers.reconcile.lambda_handler",
    "PredictApiFunction": "batchpredict.handlers.predict_api.lambda_handler",
    "SweepFunction": "batchpredict.handlers.sweep.lambda_handler",
}
ZIP_FUNCTIONS = ("SplitManifestFunction", "FinalizeFunction", "ReconcileFunction", "SweepFunction")
IMAGE_FUNCTIONS = ("PredictFunction", "PredictApiFunction")
PIPELINE_QUEUES = ("ManifestQueue", "WorkQueue", "FinalizeQueue")


def getatt_target(value: Any) -> str | None:
    """The logical id a ``{"Fn::GetAtt": [X, "Arn"]}`` (or ``{"Ref": X}``) names."""
    if isinstance(value, dict):
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            return str(target[0] if isinstance(target, list) else target.split(".")[0])
        if "Ref" in value:
            return str(value["Ref"])
    return None


def parameter_max(cfn: dict[str, Any], value: Any) -> int:
    """A number, or the largest value a ``Ref`` to a Number parameter may take."""
    if isinstance(value, dict) and "Ref" in value:
        return int(cfn["Parameters"][value["Ref"]]["MaxValue"])
    return int(value)


def mappings_by_queue(cfn: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Queue logical id -> (mapping logical id, mapping properties)."""
    out = {}
    for name, mapping in resources(cfn, "AWS::Lambda::EventSourceMapping").items():
        queue = getatt_target(mapping["Properties"]["EventSourceArn"])
        assert queue is not None, f"{name}: EventSourceArn is not a queue of the stack"
        out[queue] = (name, mapping["Properties"])
    return out


def queue_problems(cfn: dict[str, Any]) -> list[str]:
    """Every consumed queue has a dead-letter queue (maxReceiveCount >= 5) and a visibility
    timeout >= its consumer's timeout + batching window; every dead-letter queue keeps
    messages 14 days and has a depth alarm; every queue is encrypted."""
    problems = []
    queues = resources(cfn, "AWS::SQS::Queue")
    functions = resources(cfn, "AWS::Lambda::Function")
    consumed = mappings_by_queue(cfn)
    dead_letter_targets = set()
    for name in PIPELINE_QUEUES:
        if name not in consumed:
            problems.append(f"{name}: no function consumes it")
    for name, queue in queues.items():
        props = queue["Properties"]
        if props.get("SqsManagedSseEnabled") is not True and "KmsMasterKeyId" not in props:
            problems.append(f"{name}: not encrypted (SqsManagedSseEnabled)")
        redrive = props.get("RedrivePolicy")
        if redrive:
            target = getatt_target(redrive.get("deadLetterTargetArn"))
            if target not in queues:
                problems.append(f"{name}: dead-letter target {target} is not a queue of the stack")
            else:
                dead_letter_targets.add(target)
            if int(redrive.get("maxReceiveCount", 0)) < MIN_MAX_RECEIVE_COUNT:
                problems.append(f"{name}: maxReceiveCount {redrive.get('maxReceiveCount')} < 5")
        if name in consumed:
            if not redrive:
                problems.append(f"{name}: consumed by a function but has no dead-letter queue")
            mapping = consumed[name][1]
            function = getatt_target(mapping["FunctionName"])
            timeout = int(functions[function]["Properties"]["Timeout"]) if function in functions else 0
            window = parameter_max(cfn, mapping.get("MaximumBatchingWindowInSeconds", 0))
            needed = VISIBILITY_FACTOR * timeout + window
            if int(props.get("VisibilityTimeout", 30)) < needed:
                problems.append(
                    f"{name}: VisibilityTimeout {props.get('VisibilityTimeout', 30)} < "
                    f"{function}'s {timeout} s + {window} s window"
                )
    alarmed = {
        getatt_target(dimension["Value"])
        for alarm in resources(cfn, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
        for dimension in alarm["Properties"].get("Dimensions", [])
        if dimension["Name"] == "QueueName"
    }
    for name in sorted(dead_letter_targets):
        if int(queues[name]["Properties"].get("MessageRetentionPeriod", 0)) != DLQ_RETENTION:
            problems.append(f"{name}: a dead-letter queue should keep messages 14 days")
        if name not in alarmed:
            problems.append(f"{name}: dead-letter queue without a depth alarm")
    for name in queues:
        if name not in consumed and name not in dead_letter_targets:
            problems.append(f"{name}: neither consumed nor a dead-letter queue")
    return problems


def mapping_problems(cfn: dict[str, Any]) -> list[str]:
    """Every SQS mapping reports partial batch failures and sets its batch size; the work
    queue's mapping caps concurrency (throttled messages then wait instead of dead-lettering)."""
    problems = []
    for queue, (name, props) in mappings_by_queue(cfn).items():
        if props.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
            problems.append(f"{name} ({queue}): FunctionResponseTypes is not [ReportBatchItemFailures]")
        if "BatchSize" not in props:
            problems.append(f"{name} ({queue}): no BatchSize")
        if props.get("Enabled", True) is not True:
            problems.append(f"{name} ({queue}): disabled")
    work = mappings_by_queue(cfn).get("WorkQueue")
    if work is not None and "MaximumConcurrency" not in work[1].get("ScalingConfig", {}):
        problems.append(f"{work[0]} (WorkQueue): no ScalingConfig.MaximumConcurrency")
    return problems


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _branches(value: Any) -> Iterator[Any]:
    """Both sides of an ``Fn::If`` (recursively), without ``AWS::NoValue``."""
    if isinstance(value, dict) and "Fn::If" in value:
        for branch in value["Fn::If"][1:]:
            yield from _branches(branch)
    elif not (isinstance(value, dict) and value.get("Ref") == "AWS::NoValue"):
        yield value


def policy_statements(cfn: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every identity-policy statement of the stack's roles and policies."""
    for name, role in resources(cfn, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for statement in _as_list(policy["PolicyDocument"]["Statement"]):
                for branch in _branches(statement):
                    yield f"{name}/{policy['PolicyName']}", branch
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for name, policy in resources(cfn, kind).items():
            for statement in _as_list(policy["Properties"]["PolicyDocument"]["Statement"]):
                for branch in _branches(statement):
                    yield name, branch


def _is_scoped(resource: Any, cfn: dict[str, Any]) -> bool:
    """A resource built from the stack's own resources or from a parameter, never a literal."""
    if isinstance(resource, str):
        return False
    if not isinstance(resource, dict) or len(resource) != 1:
        return False
    ((function, argument),) = resource.items()
    known = set(cfn["Resources"]) | set(cfn.get("Parameters", {}))
    if function in ("Ref", "Fn::GetAtt"):
        return getatt_target(resource) in known
    if function == "Fn::Sub":
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        named = {v.split(".")[0] for v in _sub_names(text)} - {"AWS::Partition"}
        if not named:
            return False
        return all(n in known or (n in variables and _mentions_known(variables[n], known)) for n in named)
    return False


def _sub_names(text: str) -> list[str]:
    return re.findall(r"\$\{([^!}][^}]*)\}", text)


def _mentions_known(value: Any, known: set[str]) -> bool:
    if isinstance(value, dict):
        if "Ref" in value or "Fn::GetAtt" in value:
            return getatt_target(value) in known
        return any(_mentions_known(v, known) for v in value.values())
    if isinstance(value, list):
        return any(_mentions_known(v, known) for v in value)
    return False


def iam_problems(cfn: dict[str, Any]) -> list[str]:
    """No managed policies, no wildcard or NotAction grants, resources scoped to the stack."""
    problems = []
    for name, role in resources(cfn, "AWS::IAM::Role").items():
        if role["Properties"].get("ManagedPolicyArns"):
            problems.append(f"{name}: managed policies {role['Properties']['ManagedPolicyArns']}")
    for where, statement in policy_statements(cfn):
        if statement.get("Effect") != "Allow":
            continue
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{where} {statement.get('Sid')}: NotAction/NotResource")
        actions = _as_list(statement.get("Action", []))
        for action in actions:
            if not isinstance(action, str) or "*" in action or "?" in action or ":" not in action:
                problems.append(f"{where} {statement.get('Sid')}: wildcard action {action!r}")
        for resource in _as_list(statement.get("Resource", [])):
            if resource == "*":
                extra = sorted(set(actions) - STAR_RESOURCE_ALLOWED)
                if extra:
                    problems.append(f"{where} {statement.get('Sid')}: Resource '*' for {extra}")
            elif not _is_scoped(resource, cfn):
                problems.append(f"{where} {statement.get('Sid')}: resource {resource!r} not scoped")
    return problems


def all_problems(cfn: dict[str, Any]) -> list[str]:
    return queue_problems(cfn) + mapping_problems(cfn) + iam_problems(cfn)
