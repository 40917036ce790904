"""Provision the local stack from infrastructure/template.yaml (translated offline).

Queues (with their redrive policies), buckets (and the S3 -> manifest-queue notification),
the table, each function's environment, timeout and memory, and each event-source
mapping's batch size, window and concurrency are read from the template, so the local
stack and AWS cannot drift. Two local adjustments, both explicit: function timeouts are
capped (``max_function_timeout``) and each consumed queue's visibility timeout follows from
its consumer's capped timeout by the template's own rule for that queue (the whole multiple of
the timeout the template gives it: 1 for the work and finalize queues, 6 for the manifest and
dead-letter queues) + the batching window, so a crashed local worker's messages come back as
they would on AWS, scaled to the capped timeouts. Job
deadlines follow those local numbers (``template.deadline_environment``), and the schedule
rules (the sweeper's) run every ``schedule_seconds`` instead of their rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchpredict.local.runner import Mapping
from batchpredict.local.schedules import Schedule, rate_seconds
from batchpredict.local.template import (
    TEMPLATE,
    Resolver,
    deadline_environment,
    parameter_defaults,
    resources,
    translate,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import QueueConfigurationTypeDef
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

DOCKERFILE = TEMPLATE.parent / "Dockerfile"
REGION = "us-east-1"
ACCOUNT = "000000000000"


@dataclass(frozen=True)
class LocalOptions:
    model_uri: str
    prefix: str = "batchpredict"
    # ALLOWED_NETWORKS of every function: nothing on loopback unless named (moto and DynamoDB
    # Local listen there), e.g. the samples server's 127.0.0.1:PORT.
    allowed_networks: str = ""
    predict_workers: int = 1
    # Lambda scales out while messages wait: the local predict pool may grow to this many
    # workers (None: 4 x predict_workers, capped by the template's MaximumConcurrency).
    max_predict_workers: int | None = None
    max_function_timeout: float | None = 60.0
    # How often the template's scheduled functions (the sweeper) run locally (None: their rate).
    schedule_seconds: float | None = 3.0
    environment: dict[str, str] = field(default_factory=dict)  # added to every function's
    parameters: dict[str, str] = field(default_factory=dict)  # template parameter overrides
    # The predictor image's workers compute on the machine's cores in turn, each on as many as
    # its memory buys on Lambda, and their REPORT lines and chunks estimate Lambda's bill
    # (cpu_slots.py). False: they share the cores freely (and bill their wall time).
    cpu_slots: bool = True
    # The standard queues deliver as Amazon SQS fair queues do, by MessageGroupId (sqs_depth.py).
    # False: in send order, as without fair queues (benchmarks/fairness.py's --no-fair).
    fair_queues: bool = True


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    handler: str
    timeout: float
    memory_mb: int
    environment: dict[str, str]


@dataclass
class LocalPlan:
    input_bucket: str
    output_bucket: str
    table: str
    queues: dict[str, tuple[str, str]]  # logical id -> (url, arn)
    functions: dict[str, FunctionSpec]
    mappings: list[Mapping]
    event_bus: str = ""
    # Locally every job state change event also lands here (a rule on the bus -> this queue),
    # for `batchpredict watch --events` and the tests to read.
    events_queue: str = ""
    schedules: list[Schedule] = field(default_factory=list)  # the template's schedule rules


def samples_bucket(prefix: str) -> str:
    """The bucket `local run --serve` copies its folder to."""
    return f"{prefix}-samples"


def image_command() -> str:
    """The predictor image's default handler: the Dockerfile's CMD."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("CMD "):
            return str(json.loads(line[4:])[0])
    raise ValueError(f"{DOCKERFILE} has no CMD")


class _Provisioner:
    """The template's resources made through the clients each step is given; names and ARNs kept
    for the references of later steps."""

    def __init__(self, options: LocalOptions, cfn: dict[str, Any]) -> None:
        self.options = options
        self.cfn = cfn
        self.physical: dict[str, str] = {}
        self.arns: dict[str, str] = {}
        # Each queue's visibility timeout and maxReceiveCount as made here (job deadlines).
        self.visibility: dict[str, float] = {}
        self.receives: dict[str, int] = {}
        parameters = parameter_defaults(cfn) | options.parameters
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::StackName": options.prefix,
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.resolve = Resolver(cfn, parameters, pseudo, self.physical, self._attribute)

    def _attribute(self, name: str, attr: str) -> str:
        if attr == "Arn":
            return self.arns[name]
        if attr == "QueueName":
            return self.physical[name].rsplit("/", 1)[-1]
        raise KeyError(f"{name}.{attr} is not available locally")

    def _name(self, logical_id: str) -> str:
        return f"{self.options.prefix}-{logical_id.lower()}"

    def function_specs(self) -> dict[str, FunctionSpec]:
        specs = {}
        for logical_id in resources(self.cfn, "AWS::Lambda::Function"):
            self.physical[logical_id] = self._name(logical_id)
        for logical_id, resource in resources(self.cfn, "AWS::Lambda::Function").items():
            props = resource["Properties"]
            command = (props.get("ImageConfig") or {}).get("Command")
            handler = props.get("Handler") or (command[0] if command else image_command())
            timeout = float(self.resolve(props.get("Timeout", 3)))
            if self.options.max_function_timeout is not None:
                timeout = min(timeout, self.options.max_function_timeout)
            specs[logical_id] = FunctionSpec(
                logical_id, handler, timeout, int(self.resolve(props.get("MemorySize", 128))), {}
            )
        return specs

    def visibility_factor(self, queue: str, function: str) -> int:
        """The whole multiple of its consumer's timeout the template gives a queue's visibility
        timeout (its batching window included), at least 1."""
        resources_ = self.cfn["Resources"]
        visibility = float(self.resolve(resources_[queue]["Properties"].get("VisibilityTimeout", 30)))
        timeout = float(self.resolve(resources_[function]["Properties"].get("Timeout", 3)))
        return max(1, int(visibility // timeout))

    def queues(self, sqs: SQSClient, consumers: dict[str, float]) -> None:
        """Create every queue, dead-letter targets first; ``consumers`` gives the visibility timeouts."""
        pending = dict(resources(self.cfn, "AWS::SQS::Queue"))
        while pending:
            for logical_id, resource in list(pending.items()):
                props = resource["Properties"]
                redrive = props.get("RedrivePolicy")
                target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0] if redrive else None
                if target and target not in self.arns:
                    continue
                attributes: dict[QueueAttributeNameType, str] = {}
                if "MessageRetentionPeriod" in props:
                    attributes["MessageRetentionPeriod"] = str(self.resolve(props["MessageRetentionPeriod"]))
                visibility = consumers.get(logical_id, self.resolve(props.get("VisibilityTimeout", 30)))
                attributes["VisibilityTimeout"] = str(math.ceil(float(visibility)))
                self.visibility[logical_id] = math.ceil(float(visibility))
                if redrive:
                    attributes["RedrivePolicy"] = json.dumps(self.resolve(redrive))
                    self.receives[logical_id] = int(self.resolve(redrive["maxReceiveCount"]))
                self.physical[logical_id], self.arns[logical_id] = self._queue(sqs, logical_id, attributes)
                del pending[logical_id]

    def _queue(
        self, sqs: SQSClient, logical_id: str, attributes: dict[QueueAttributeNameType, str]
    ) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=self._name(logical_id), Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
        return url, arn["QueueArn"]

    def buckets(self, s3: S3Client) -> None:
        for logical_id in resources(self.cfn, "AWS::S3::Bucket"):
            name = self._name(logical_id)
            s3.create_bucket(Bucket=name)
            self.physical[logical_id] = name
            self.arns[logical_id] = f"arn:aws:s3:::{name}"

    def notifications(self, s3: S3Client) -> None:
        for logical_id, resource in resources(self.cfn, "AWS::S3::Bucket").items():
            config = resource["Properties"].get("NotificationConfiguration")
            if not config:
                continue
            queue_configs: list[QueueConfigurationTypeDef] = []
            for entry in self.resolve(config).get("QueueConfigurations", []):
                rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])
                queue_configs.append(
                    {
                        "QueueArn": entry["Queue"],
                        "Events": [entry["Event"]],
                        "Filter": {"Key": {"FilterRules": rules}},
                    }
                )
            s3.put_bucket_notification_configuration(
                Bucket=self.physical[logical_id],
                NotificationConfiguration={"QueueConfigurations": queue_configs},
            )

    def tables(self, dynamodb: DynamoDBClient) -> None:
        for logical_id, resource in resources(self.cfn, "AWS::DynamoDB::Table").items():
            props = self.resolve(resource["Properties"])
            name = self._name(logical_id)
            indexes = {"GlobalSecondaryIndexes": props["GlobalSecondaryIndexes"]}
            dynamodb.create_table(
                TableName=name,
                KeySchema=props["KeySchema"],
                AttributeDefinitions=props["AttributeDefinitions"],
                BillingMode=props.get("BillingMode", "PAY_PER_REQUEST"),
                **(indexes if "GlobalSecondaryIndexes" in props else {}),
            )
            ttl = props.get("TimeToLiveSpecification")
            if ttl and ttl.get("Enabled"):
                dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
            self.physical[logical_id] = name
            self.arns[logical_id] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"

    def event_buses(self, events: EventBridgeClient, sqs: SQSClient) -> tuple[str, str]:
        """The template's event bus, and (local only) a queue every job event is copied to by a
        rule on the bus: moto's EventBridge delivers to SQS targets. The template's email and
        webhook rules are not made: SNS mail and API destinations cannot be emulated here."""
        bus_name = ""
        for logical_id in resources(self.cfn, "AWS::Events::EventBus"):
            bus_name = self._name(logical_id)  # named locally as the buckets and queues are
            try:
                self.arns[logical_id] = events.create_event_bus(Name=bus_name)["EventBusArn"]
            except events.exceptions.ResourceAlreadyExistsException:
                # moto's backends live in the process: a second local stack of one prefix meets
                # the first one's bus (its queues and buckets are simply made again).
                self.arns[logical_id] = events.describe_event_bus(Name=bus_name)["Arn"]
            self.physical[logical_id] = bus_name
        if not bus_name:
            return "", ""
        url, arn = self._queue(sqs, "events", {})
        rule = self._name("events-to-queue")
        events.put_rule(
            Name=rule, EventBusName=bus_name, EventPattern=json.dumps({"source": ["batchpredict"]})
        )
        events.put_targets(Rule=rule, EventBusName=bus_name, Targets=[{"Id": "queue", "Arn": arn}])
        return bus_name, url

    def environment(self, resource: dict[str, Any], deadlines: dict[str, str]) -> dict[str, str]:
        """A function's environment: the template's, with the local stack's values where they
        differ (``deadlines``: the job deadlines of the local timeouts, for the functions that
        set them: those that are told the predict concurrency)."""
        variables = self.resolve(resource["Properties"].get("Environment", {}).get("Variables", {}))
        local = {
            "MODEL_URI": self.options.model_uri,
            "ALLOWED_NETWORKS": self.options.allowed_networks,
            "POWERTOOLS_TRACE_DISABLED": "true",
        } | deadlines
        return (
            {k: str(v) for k, v in variables.items()}
            | {
                k: v
                for k, v in local.items()
                if k in variables
                or k == "ALLOWED_NETWORKS"
                or (k in deadlines and "PREDICT_MAX_CONCURRENCY" in variables)
            }
            | self.options.environment
        )

    def schedules(self, functions: dict[str, FunctionSpec]) -> list[Schedule]:
        """The template's schedule rules that invoke one of its functions."""
        found = []
        for logical_id, resource in resources(self.cfn, "AWS::Events::Rule").items():
            props = resource["Properties"]
            if "ScheduleExpression" not in props or props.get("State", "ENABLED") != "ENABLED":
                continue
            for target in props.get("Targets", []):
                function = functions[target["Arn"]["Fn::GetAtt"][0]]
                period = self.options.schedule_seconds or rate_seconds(props["ScheduleExpression"])
                found.append(
                    Schedule(
                        function=function.logical_id,
                        handler=function.handler,
                        rule=self._name(logical_id),
                        period_seconds=period,
                        timeout_seconds=function.timeout,
                        memory_mb=function.memory_mb,
                        environment=function.environment,
                    )
                )
        return found


def provision_from_template(
    s3: S3Client,
    sqs: SQSClient,
    dynamodb: DynamoDBClient,
    options: LocalOptions,
    cfn: dict[str, Any] | None = None,
    events: EventBridgeClient | None = None,
) -> LocalPlan:
    """``events``: an EventBridge client (None: one from the environment, beside ``sqs``)."""
    from batchpredict import aws

    cfn = cfn or translate(region=REGION)
    p = _Provisioner(options, cfn)
    specs = p.function_specs()
    event_mappings = {
        name: p.resolve({k: v for k, v in r["Properties"].items() if k != "EventSourceArn"})
        | {"queue": r["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]}
        for name, r in resources(cfn, "AWS::Lambda::EventSourceMapping").items()
    }
    by_function = {p.physical[f]: f for f in specs}
    consumers = {
        m["queue"]: p.visibility_factor(m["queue"], function) * specs[function].timeout
        + float(m.get("MaximumBatchingWindowInSeconds", 0))
        for m in event_mappings.values()
        for function in [by_function[m["FunctionName"]]]
    }
    p.queues(sqs, consumers)
    p.buckets(s3)
    p.notifications(s3)
    p.tables(dynamodb)
    event_bus, events_queue = p.event_buses(events or aws.client("events"), sqs)
    deadlines = _local_deadlines(p, specs, event_mappings, options)
    functions = {}
    for logical_id, spec in specs.items():
        env = p.environment(cfn["Resources"][logical_id], deadlines)
        functions[logical_id] = FunctionSpec(logical_id, spec.handler, spec.timeout, spec.memory_mb, env)
    mappings = []
    for m in event_mappings.values():
        fn = functions[by_function[m["FunctionName"]]]
        scaling = m.get("ScalingConfig")
        # The mapping the template lets scale out gets the local worker count; the others run one.
        limit = int(scaling["MaximumConcurrency"]) if scaling else 1
        workers = min(options.predict_workers, limit)
        most = min(options.max_predict_workers or 4 * options.predict_workers, limit)
        mappings.append(
            Mapping(
                function=fn.logical_id,
                handler=fn.handler,
                queue_url=p.physical[m["queue"]],
                queue_arn=p.arns[m["queue"]],
                batch_size=int(m.get("BatchSize", 10)),
                window_seconds=float(m.get("MaximumBatchingWindowInSeconds", 0)),
                concurrency=workers,
                max_concurrency=max(most, workers),
                timeout_seconds=fn.timeout,
                memory_mb=fn.memory_mb,
                environment=fn.environment,
                visibility_seconds=int(p.visibility[m["queue"]]),
                # The predictor image (MXNet) computes; the zip functions wait on AWS calls.
                cpu_slots=options.cpu_slots and _is_image(cfn, fn.logical_id),
            )
        )
    queues = {name: (p.physical[name], p.arns[name]) for name in resources(cfn, "AWS::SQS::Queue")}
    (input_bucket, output_bucket), (table,) = _named(p, cfn)
    return LocalPlan(
        input_bucket,
        output_bucket,
        table,
        queues,
        functions,
        mappings,
        event_bus,
        events_queue,
        p.schedules(functions),
    )


def _is_image(cfn: dict[str, Any], logical_id: str) -> bool:
    return bool(cfn["Resources"][logical_id]["Properties"].get("PackageType") == "Image")


def _local_deadlines(
    p: _Provisioner,
    specs: dict[str, FunctionSpec],
    mappings: dict[str, dict[str, Any]],
    options: LocalOptions,
) -> dict[str, str]:
    """Job deadlines from the local stack's own numbers: its capped timeouts, the visibility
    timeouts that follow, and as many predict invocations at once as it starts workers."""
    (work,) = [m for m in mappings.values() if m["queue"] == "WorkQueue"]
    timeouts = {name: spec.timeout for name, spec in specs.items()}
    return deadline_environment(timeouts, p.visibility, p.receives) | {
        "WORK_BATCH_SIZE": str(work.get("BatchSize", 10)),
        "PREDICT_MAX_CONCURRENCY": str(options.predict_workers),
    }


def provision_tables(
    dynamodb: DynamoDBClient, options: LocalOptions, cfn: dict[str, Any] | None = None
) -> list[str]:
    """Only the template's tables (the DynamoDB adapter's tests against one engine); their names."""
    p = _Provisioner(options, cfn or translate(region=REGION))
    p.tables(dynamodb)
    return list(p.physical.values())


def _named(p: _Provisioner, cfn: dict[str, Any]) -> tuple[tuple[str, str], tuple[str]]:
    outputs = {
        k: p.resolve(v["Value"])
        for k, v in cfn.get("Outputs", {}).items()
        if k in {"InputBucketName", "OutputBucketName", "ResultsTableName"}
    }
    return (outputs["InputBucketName"], outputs["OutputBucketName"]), (outputs["ResultsTableName"],)
