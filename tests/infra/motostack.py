"""Deploy the translated template into a moto server, plus the fix-ups moto needs.

moto's CloudFormation creates most of the stack with ``create_stack``. What it lacks is
applied afterwards through the services' own APIs, from the template's own properties
(intrinsics resolved against the deployed stack), so the tests read real API state rather
than the template. The fix-ups, by moto gap (moto 5.2):

* Resource types moto's CloudFormation has no model for (it would skip them with a warning):
  taken out of the stack and made by API.
  ``AWS::SQS::QueuePolicy`` -> SetQueueAttributes(Policy); ``AWS::S3::BucketPolicy`` ->
  PutBucketPolicy; ``AWS::CloudWatch::Alarm`` -> PutMetricAlarm; ``AWS::ApiGatewayV2::Api``
  (SAM's OpenAPI ``Body``) -> CreateApi + ReimportApi (moto serves no ImportApi, and its
  import ignores ``security`` and ``securitySchemes``: test_template checks the authorizers);
  ``AWS::ApiGatewayV2::Stage`` -> CreateStage; and the ``AWS::Lambda::Permission``
  resources whose SourceArn names the API -> AddPermission.
* ``Ref`` of an ``AWS::Events::EventBus`` gives moto's model object, not the bus name (the
  functions' EVENT_BUS_NAME then breaks Lambda's API): replaced by the bus's own ``Name``.
* Properties moto's models drop, applied by API: ``AWS::S3::Bucket`` keeps only
  BucketEncryption and Tags -> PutPublicAccessBlock, PutBucketOwnershipControls,
  PutBucketVersioning, PutBucketLifecycleConfiguration and PutBucketNotificationConfiguration
  (the S3 -> manifest queue events); ``AWS::DynamoDB::Table`` drops
  PointInTimeRecoverySpecification and TimeToLiveSpecification -> UpdateContinuousBackups,
  UpdateTimeToLive.
* Properties moto drops and takes from no API either: ``AWS::Lambda::Function`` PackageType,
  ImageConfig, Architectures, TracingConfig and LoggingConfig. The tests assert those on the
  translated template. moto cannot run Lambda code without Docker, but creating the functions
  works: zip code is read from an S3 object uploaded here, image URIs are not checked.
"""

from __future__ import annotations

import copy
import io
import json
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

import boto3

from batchpredict.local.template import ARTIFACT_BUCKET, ARTIFACT_KEY, Resolver, references

# Resource types created through their APIs after create_stack (see the module docstring).
MADE_BY_API = (
    "AWS::SQS::QueuePolicy",
    "AWS::S3::BucketPolicy",
    "AWS::CloudWatch::Alarm",
    "AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Stage",
)
# Bucket and table properties moto's CloudFormation ignores, applied by API.
BUCKET_FIXUPS = (
    "PublicAccessBlockConfiguration",
    "OwnershipControls",
    "VersioningConfiguration",
    "LifecycleConfiguration",
    "NotificationConfiguration",
)
TABLE_FIXUPS = ("PointInTimeRecoverySpecification", "TimeToLiveSpecification")
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"


def split_for_moto(cfn: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The template moto's create_stack gets, and the logical ids left for the API fix-ups:
    the MADE_BY_API types, and whatever refers to one of them."""
    moto_cfn = _bus_refs_by_name(copy.deepcopy(cfn))
    removed = [name for name, r in cfn["Resources"].items() if r["Type"] in MADE_BY_API]
    changed = True
    while changed:
        changed = False
        for name, resource in moto_cfn["Resources"].items():
            if name in removed:
                continue
            body = {k: v for k, v in resource.items() if k != "DependsOn"}
            if set(references(body)) & set(removed):
                removed.append(name)
                changed = True
    for name in removed:
        del moto_cfn["Resources"][name]
    for resource in moto_cfn["Resources"].values():
        depends = resource.get("DependsOn")
        if depends is not None:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in removed]
            if kept:
                resource["DependsOn"] = kept
            else:
                del resource["DependsOn"]
    moto_cfn["Outputs"] = {
        k: v for k, v in moto_cfn.get("Outputs", {}).items() if not set(references(v)) & set(removed)
    }
    return moto_cfn, removed


def _bus_refs_by_name(cfn: dict[str, Any]) -> dict[str, Any]:
    names = {
        n: r["Properties"]["Name"]
        for n, r in cfn["Resources"].items()
        if r["Type"] == "AWS::Events::EventBus"
    }

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1 and value.get("Ref") in names:
                return copy.deepcopy(names[value["Ref"]])
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(cfn)  # type: ignore[no-any-return]


@dataclass
class DeployedStack:
    """A stack on the moto server: physical ids by logical id, resolved outputs, the resolver."""

    name: str
    stack_id: str
    cfn: dict[str, Any]
    parameters: dict[str, str]
    physical: dict[str, str]
    moto_outputs: dict[str, str]
    made_by_api: list[str]
    resolve: Resolver = field(repr=False)
    active: set[str] = field(default_factory=set)  # the resources whose Condition holds
    outputs: dict[str, str] = field(default_factory=dict)

    def arn(self, logical_id: str) -> str:
        return str(self.resolve.attribute(logical_id, "Arn"))


class _Clients:
    def __init__(self) -> None:
        self.cfn = boto3.client("cloudformation")
        self.s3 = boto3.client("s3")
        self.sqs = boto3.client("sqs")
        self.lam = boto3.client("lambda")
        self.ddb = boto3.client("dynamodb")
        self.cw = boto3.client("cloudwatch")
        self.apigw = boto3.client("apigatewayv2")
        self.logs = boto3.client("logs")


def upload_code_artifact(s3: Any) -> None:
    """The S3 object the zip functions' Code points at (moto reads it on CreateFunction)."""
    try:
        s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        return
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("batchpredict/__init__.py", "")
    s3.put_object(Bucket=ARTIFACT_BUCKET, Key=ARTIFACT_KEY, Body=buffer.getvalue())


def _wait(clients: _Clients, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stack = clients.cfn.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS"):
            return stack  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} still {stack['StackStatus']} after {timeout} s")
        time.sleep(0.1)


def deploy(
    cfn: dict[str, Any], name: str, parameters: dict[str, str] | None = None, timeout: float = 60
) -> DeployedStack:
    """create_stack on the moto server (AWS_ENDPOINT_URL), wait, then apply the fix-ups."""
    clients = _Clients()
    upload_code_artifact(clients.s3)
    moto_cfn, made_by_api = split_for_moto(cfn)
    given = parameters or {}
    clients.cfn.create_stack(
        StackName=name,
        TemplateBody=json.dumps(moto_cfn),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = _wait(clients, name, timeout)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = clients.cfn.describe_stack_events(StackName=name)["StackEvents"]
        failed = [e for e in events if e["ResourceStatus"].endswith("FAILED")]
        raise AssertionError(f"{name}: {stack['StackStatus']} {stack.get('StackStatusReason')} {failed}")
    summaries = clients.cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    # moto lists each resource it skipped for a false Condition as an empty summary.
    created = {s["LogicalResourceId"]: s for s in summaries if s["LogicalResourceId"]}
    defaults = {k: str(p.get("Default", "")) for k, p in cfn.get("Parameters", {}).items()}
    values = defaults | given
    # Resources whose Condition is false (e.g. no NotificationEmail) are rightly not made.
    conditions = Resolver(cfn, values, {}, {}, lambda n, a: "")
    expected = {
        n
        for n, r in moto_cfn["Resources"].items()
        if "Condition" not in r or conditions.condition(r["Condition"])
    }
    missing = sorted(expected - set(created))
    assert not missing, f"moto did not create {missing}"
    assert all(s["ResourceStatus"] == "CREATE_COMPLETE" for s in created.values()), summaries
    stack_id = stack["StackId"]
    pseudo = {
        "AWS::Region": clients.cfn.meta.region_name,
        "AWS::AccountId": stack_id.split(":")[4],
        "AWS::Partition": PARTITION,
        "AWS::URLSuffix": URL_SUFFIX,
        "AWS::StackName": name,
        "AWS::StackId": stack_id,
    }
    physical = {k: s["PhysicalResourceId"] for k, s in created.items()}
    for bus in (n for n in created if cfn["Resources"][n]["Type"] == "AWS::Events::EventBus"):
        # moto gives an event bus no physical id: it is its Name.
        physical[bus] = str(
            Resolver(cfn, values, pseudo, {}, lambda n, a: "")(cfn["Resources"][bus]["Properties"]["Name"])
        )
    resolver = Resolver(cfn, values, pseudo, physical, lambda n, a: _attribute(clients, cfn, physical, n, a))
    deployed = DeployedStack(
        name=name,
        stack_id=stack_id,
        cfn=cfn,
        parameters=values,
        physical=physical,
        moto_outputs={o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        made_by_api=made_by_api,
        resolve=resolver,
        active=expected | set(made_by_api),
    )
    _apply_fixups(clients, deployed)
    deployed.outputs = {k: str(resolver(o["Value"])) for k, o in cfn.get("Outputs", {}).items()}
    return deployed


def _attribute(clients: _Clients, cfn: dict[str, Any], physical: dict[str, str], name: str, attr: str) -> str:
    kind = cfn["Resources"][name]["Type"]
    pid = physical[name]
    if kind == "AWS::SQS::Queue" and attr == "Arn":
        return clients.sqs.get_queue_attributes(QueueUrl=pid, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
    if kind == "AWS::SQS::Queue" and attr == "QueueName":
        return pid.rsplit("/", 1)[1]
    if kind == "AWS::S3::Bucket" and attr == "Arn":
        return f"arn:{PARTITION}:s3:::{pid}"
    if kind == "AWS::Lambda::Function" and attr == "Arn":
        return clients.lam.get_function_configuration(FunctionName=pid)["FunctionArn"]  # type: ignore[no-any-return]
    if kind == "AWS::Logs::LogGroup" and attr == "Arn":
        (group,) = clients.logs.describe_log_groups(logGroupNamePrefix=pid)["logGroups"]
        return group["arn"]  # type: ignore[no-any-return]
    if kind == "AWS::DynamoDB::Table" and attr == "Arn":
        return clients.ddb.describe_table(TableName=pid)["Table"]["TableArn"]  # type: ignore[no-any-return]
    raise NotImplementedError(f"GetAtt {name}.{attr} ({kind})")


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """CloudFormation's lifecycle rule shape -> the API's (the keys this template uses)."""
    known = {"Id", "Status", "Prefix", "ExpirationInDays", "NoncurrentVersionExpiration"}
    known |= {"AbortIncompleteMultipartUpload"}
    unknown = set(rule) - known
    if unknown:
        raise NotImplementedError(f"lifecycle rule keys {sorted(unknown)}: extend the fix-up")
    out: dict[str, Any] = {
        "ID": rule["Id"],
        "Status": rule["Status"],
        "Filter": {"Prefix": rule.get("Prefix", "")},
    }
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "NoncurrentVersionExpiration" in rule:
        out["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": int(rule["NoncurrentVersionExpiration"]["NoncurrentDays"])
        }
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])
        }
    return out


def _notifications(config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(config) - {"QueueConfigurations"}
    if unknown:
        raise NotImplementedError(f"notification keys {sorted(unknown)}: extend the fix-up")
    return {
        "QueueConfigurations": [
            {
                "QueueArn": q["Queue"],
                "Events": [q["Event"]],
                "Filter": {"Key": {"FilterRules": q["Filter"]["S3Key"]["Rules"]}},
            }
            for q in config["QueueConfigurations"]
        ]
    }


def _apply_fixups(clients: _Clients, stack: DeployedStack) -> None:
    cfn, resolve, physical = stack.cfn, stack.resolve, stack.physical
    for name, resource in cfn["Resources"].items():
        if resource["Type"] not in ("AWS::S3::Bucket", "AWS::DynamoDB::Table"):
            continue
        props = resolve(resource.get("Properties", {}))
        if resource["Type"] == "AWS::S3::Bucket":
            _fix_bucket(clients, physical[name], props)
        else:
            _fix_table(clients, physical[name], props)
    _make_by_api(clients, stack)


def _fix_bucket(clients: _Clients, bucket: str, props: dict[str, Any]) -> None:
    if "PublicAccessBlockConfiguration" in props:
        clients.s3.put_public_access_block(
            Bucket=bucket, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
        )
    if "OwnershipControls" in props:
        clients.s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=props["OwnershipControls"])
    if "VersioningConfiguration" in props:
        clients.s3.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration=props["VersioningConfiguration"]
        )
    if "LifecycleConfiguration" in props:
        rules = [_lifecycle_rule(r) for r in props["LifecycleConfiguration"]["Rules"]]
        clients.s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    if "NotificationConfiguration" in props:
        clients.s3.put_bucket_notification_configuration(
            Bucket=bucket, NotificationConfiguration=_notifications(props["NotificationConfiguration"])
        )


def _fix_table(clients: _Clients, table: str, props: dict[str, Any]) -> None:
    if "PointInTimeRecoverySpecification" in props:
        enabled = props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"]
        clients.ddb.update_continuous_backups(
            TableName=table, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": enabled}
        )
    if "TimeToLiveSpecification" in props:
        clients.ddb.update_time_to_live(
            TableName=table, TimeToLiveSpecification=props["TimeToLiveSpecification"]
        )


def _make_by_api(clients: _Clients, stack: DeployedStack) -> None:
    """The resources moto has no CloudFormation model for, in dependency order."""
    cfn, resolve, physical = stack.cfn, stack.resolve, stack.physical
    order = {kind: i for i, kind in enumerate(MADE_BY_API)} | {"AWS::Lambda::Permission": len(MADE_BY_API)}
    for name in sorted(stack.made_by_api, key=lambda n: order.get(cfn["Resources"][n]["Type"], 99)):
        resource = cfn["Resources"][name]
        if "Condition" in resource and not resolve.condition(resource["Condition"]):
            continue
        kind = resource["Type"]
        props = resolve(resource.get("Properties", {}))
        if kind == "AWS::SQS::QueuePolicy":
            policy = json.dumps(props["PolicyDocument"])
            for url in props["Queues"]:
                clients.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
            physical[name] = ",".join(props["Queues"])
        elif kind == "AWS::S3::BucketPolicy":
            clients.s3.put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))
            physical[name] = props["Bucket"]
        elif kind == "AWS::CloudWatch::Alarm":
            physical[name] = f"{stack.name}-{name}"
            clients.cw.put_metric_alarm(AlarmName=physical[name], **props)
        elif kind == "AWS::ApiGatewayV2::Api":
            unknown = set(props) - {"Body", "FailOnWarnings", "Tags"}
            if unknown:
                raise NotImplementedError(f"{name}: {sorted(unknown)}: extend the fix-up")
            # moto serves ReimportApi but not ImportApi: create an empty HTTP API, then import.
            title = props["Body"]["info"]["title"]
            physical[name] = clients.apigw.create_api(Name=title, ProtocolType="HTTP")["ApiId"]
            clients.apigw.reimport_api(
                ApiId=physical[name],
                Body=json.dumps(props["Body"]),
                FailOnWarnings=bool(props.get("FailOnWarnings")),
            )
        elif kind == "AWS::ApiGatewayV2::Stage":
            # Number parameters resolve to strings; CloudFormation converts them, boto3 does not.
            for settings in (props.get("DefaultRouteSettings"), *props.get("RouteSettings", {}).values()):
                if settings:
                    _typed_throttle(settings)
            clients.apigw.create_stage(**props)
            physical[name] = props["StageName"]
        elif kind == "AWS::Lambda::Permission":
            clients.lam.add_permission(StatementId=name, **props)
            physical[name] = name
        else:
            raise NotImplementedError(f"{name} ({kind}) has no fix-up")


def _typed_throttle(settings: dict[str, Any]) -> None:
    for key, kind in (("ThrottlingRateLimit", float), ("ThrottlingBurstLimit", int)):
        if key in settings:
            settings[key] = kind(settings[key])
