"""infrastructure/template.yaml, read by code: translated offline to plain CloudFormation
(aws-sam-translator, no credentials, no network) and its intrinsics evaluated.

The local stack provisions itself from the translated template and the infrastructure
tests check it, so the queue, table, function and mapping settings live in one place.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from batchpredict.deadlines import RETRY_HOLD_FACTOR

TEMPLATE = Path(__file__).resolve().parents[3] / "infrastructure" / "template.yaml"

# What `sam deploy` puts in place of the local CodeUri / the image it builds and pushes.
ARTIFACT_BUCKET = "batchpredict-test-artifacts"
ARTIFACT_KEY = "lambda/batchpredict-lambda-arm64.zip"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/batchpredict:python3.11"


class NoManagedPolicies:
    """Stands in for the loader that would list AWS managed policies through IAM."""

    def load(self) -> dict[str, str]:
        return {}


def load_sam(path: Path = TEMPLATE) -> dict[str, Any]:
    from samtranslator.yaml_helper import yaml_parse

    return yaml_parse(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def with_artifacts(sam: dict[str, Any]) -> dict[str, Any]:
    """What `sam package` does to the template: local code -> S3 object, image -> ECR URI."""
    sam = copy.deepcopy(sam)
    for resource in sam["Resources"].values():
        if resource["Type"] != "AWS::Serverless::Function":
            continue
        props = resource["Properties"]
        if props.get("PackageType") == "Image":
            props["ImageUri"] = IMAGE_URI
        else:
            props["CodeUri"] = f"s3://{ARTIFACT_BUCKET}/{ARTIFACT_KEY}"
    return sam


def translate(sam: dict[str, Any] | None = None, region: str = "us-east-1") -> dict[str, Any]:
    """Plain CloudFormation from the SAM template, offline: no credentials, no network."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    # A session with only a region: the translator needs one for pseudo parameters, nothing else.
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=region))
    managed = NoManagedPolicies()
    return translator.translate(  # type: ignore[no-any-return]
        with_artifacts(sam or load_sam()), parameter_values={}, get_managed_policy_map=managed.load
    )


def deadline_environment(
    timeouts: Mapping[str, float], visibility: Mapping[str, float], receives: Mapping[str, int]
) -> dict[str, str]:
    """The DEADLINE_* settings (``config.deadline_settings``) a stack's own numbers give: its
    functions' timeouts, its queues' visibility timeouts and maxReceiveCounts, by logical id.
    The template's numbers give ``deadlines.DeadlineSettings()`` (tests/infra checks); the local
    stack passes its capped ones."""
    predict = timeouts["PredictFunction"]
    held_back = max(visibility["WorkQueue"], RETRY_HOLD_FACTOR * predict)
    settings = {
        "DEADLINE_SPLIT_SECONDS": receives["ManifestQueue"] * visibility["ManifestQueue"],
        "DEADLINE_PREDICT_SECONDS": predict,
        "DEADLINE_ATTEMPTS": receives["WorkQueue"],
        "DEADLINE_RETRY_SECONDS": receives["WorkQueue"] * held_back + visibility["WorkDeadLetterQueue"],
        "DEADLINE_FINALIZE_SECONDS": receives["FinalizeQueue"] * visibility["FinalizeQueue"],
    }
    return {name: f"{value:g}" for name, value in settings.items()}


def resources(cfn: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in cfn["Resources"].items() if r["Type"] == kind}


def parameter_defaults(cfn: dict[str, Any]) -> dict[str, str]:
    return {name: str(p.get("Default", "")) for name, p in cfn.get("Parameters", {}).items()}


class _NoValue:
    """``AWS::NoValue``: dropped from the enclosing dict or list."""


NO_VALUE = _NoValue()


def references(value: Any) -> Iterator[str]:
    """Logical ids and parameters a value refers to (Ref, GetAtt, ${X} in Sub)."""
    if isinstance(value, dict):
        if "Ref" in value:
            yield value["Ref"]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            yield target[0] if isinstance(target, list) else target.split(".")[0]
        if "Fn::Sub" in value:
            argument = value["Fn::Sub"]
            text = argument if isinstance(argument, str) else argument[0]
            local = set() if isinstance(argument, str) else set(argument[1])
            for name in re.findall(r"\$\{([^!}][^}]*)\}", text):
                if name.split(".")[0] not in local:
                    yield name.split(".")[0]
        for item in value.values():
            yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


class Resolver:
    """Evaluates CloudFormation intrinsics against a deployed (or locally provisioned) stack."""

    def __init__(
        self,
        cfn: dict[str, Any],
        parameters: dict[str, str],
        pseudo: dict[str, str],
        physical: dict[str, str],
        attribute: Callable[[str, str], str],
    ) -> None:
        self.cfn = cfn
        self.parameters = parameters
        self.pseudo = pseudo
        self.physical = physical
        self.attribute = attribute

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            value = self.parameters[name]
            kind = self.cfn["Parameters"][name]["Type"]
            return value.split(",") if kind == "CommaDelimitedList" else value
        return self.physical[name]

    def condition(self, name: str) -> bool:
        return bool(self._condition(self.cfn["Conditions"][name]))

    def _condition(self, value: Any) -> Any:
        if isinstance(value, dict) and len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Condition":
                return self.condition(argument)
            if function == "Fn::Equals":
                left, right = (self._condition(v) for v in argument)
                return str(left) == str(right)
            if function == "Fn::Not":
                return not self._condition(argument[0])
            if function == "Fn::And":
                return all(self._condition(v) for v in argument)
            if function == "Fn::Or":
                return any(self._condition(v) for v in argument)
        return self(value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self(v) for v in value]
            return [v for v in items if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Ref":
                return self.ref(argument)
            if function == "Fn::GetAtt":
                name, attr = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.attribute(name, attr)
            if function == "Fn::If":
                name, yes, no = argument
                return self(yes if self.condition(name) else no)
            if function == "Fn::Sub":
                return self._sub(argument)
            if function == "Fn::Join":
                return self(argument[0]).join(str(v) for v in self(argument[1]))
            if function == "Fn::Split":
                return self(argument[1]).split(self(argument[0]))
            if function == "Fn::Select":
                return self(argument[1])[int(self(argument[0]))]
            if function.startswith("Fn::"):
                raise NotImplementedError(f"{function} is not resolved here")
        mapped = {k: self(v) for k, v in value.items()}
        return {k: v for k, v in mapped.items() if v is not NO_VALUE}

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {k: self(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                return str(values[name])
            if "." in name and name.split(".")[0] not in self.pseudo:
                logical, attr = name.split(".", 1)
                return str(self.attribute(logical, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", replace, text)
