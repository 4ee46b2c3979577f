#!/usr/bin/env python3
"""Check that a provider schema.json serves every name the pulumi-docker Python SDK uses.

Usage:
    pip download --no-deps pulumi-docker==4.11.2 -d /tmp/sdk && unzip -q /tmp/sdk/*.whl -d /tmp/sdk
    python3 check-sdk-schema.py /tmp/sdk/pulumi_docker "$SIN_CACHE/docker-provider/<key>/schema.json"

It reads the SDK's generated classes (resources, their Args/State classes, nested input and
output types, provider config, function results), takes the wire name of every property
(the `@pulumi.getter(name=...)` name, else the Python name) and its shape (list, map, other),
and reports:
  * resource/type/function tokens the SDK uses that the schema lacks,
  * properties the SDK sends or reads that the schema lacks,
  * list-vs-object-vs-map shape mismatches (a MaxItemsOne flattening difference),
  * inputs the schema requires that the SDK lets a program omit.
Tokens of pulumi-docker's native (not Terraform-bridged) Image resource are skipped.
Exit status 1 when anything is reported.
"""
import ast
import json
import pathlib
import re
import sys

# The native docker-build Image resource and its types: not part of the bridged provider.
NATIVE_ONLY = {
    "docker:index/image:Image",
    "docker:index/builderVersion:BuilderVersion",
    "docker:index/CacheFrom:CacheFrom",
    "docker:index/DockerBuild:DockerBuild",
    "docker:index/Registry:Registry",
}


def shape_of_annotation(ann: str) -> str:
    s, prev = ann, None
    while s != prev:  # peel Optional[...] / pulumi.Input[...] / pulumi.Output[...] in any order
        prev = s
        s = re.sub(r"^Optional\[(.*)\]$", r"\1", s)
        s = re.sub(r"^pulumi\.(Input|Output)\[(.*)\]$", r"\2", s)
    if s.startswith(("Sequence[", "List[")):
        return "array"
    if s.startswith(("Mapping[", "Dict[")):
        return "map"
    return "other"


def shape_of_schema(prop: dict) -> str:
    if prop.get("type") == "array":
        return "array"
    if prop.get("type") == "object" and "additionalProperties" in prop:
        return "map"
    return "other"


def read_sdk(root: pathlib.Path):
    """{(relative file, class name): (type token or None, {wire name: shape}, required init args)}"""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            decorators = [ast.unparse(d) for d in node.decorator_list]
            token = None
            for d in decorators:
                m = re.match(r"pulumi\.type_token\(['\"]([^'\"]+)['\"]\)", d)
                if m:
                    token = m.group(1)
            props, required = {}, set()
            for item in node.body:
                if not isinstance(item, ast.FunctionDef):
                    continue
                for d in item.decorator_list:
                    ds = ast.unparse(d)
                    if ds.startswith("pulumi.getter"):
                        m = re.search(r"name=['\"]([^'\"]+)['\"]", ds)
                        ann = ast.unparse(item.returns) if item.returns else ""
                        props[m.group(1) if m else item.name] = shape_of_annotation(ann)
                if item.name == "__init__":
                    for arg, default in zip(item.args.kwonlyargs, item.args.kw_defaults):
                        if default is None:
                            required.add(arg.arg)
            out[(rel, node.name)] = (token, props, required)
    return out


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    sdk = read_sdk(pathlib.Path(sys.argv[1]))
    schema = json.load(open(sys.argv[2]))
    resources, types, functions = schema["resources"], schema["types"], schema["functions"]
    problems, checked = [], 0

    def compare(label, sdk_props, schema_props, sdk_required=None, schema_required=()):
        nonlocal checked
        checked += 1
        for name, shape in sdk_props.items():
            if name not in schema_props:
                problems.append(f"{label}: SDK property {name!r} is not in the schema")
            elif shape != shape_of_schema(schema_props[name]):
                problems.append(f"{label}.{name}: SDK shape {shape}, schema shape "
                                f"{shape_of_schema(schema_props[name])}")
        if sdk_required is not None:
            for name in schema_required:
                if camel_to_snake(name) not in sdk_required and name not in sdk_required:
                    problems.append(f"{label}: schema requires {name!r}, the SDK lets it be omitted")

    for (rel, cls), (token, props, _) in sdk.items():
        if token in NATIVE_ONLY:
            continue
        if token and token in resources:
            res = resources[token]
            compare(f"{token} outputs", props, res.get("properties", {}))
            args = sdk.get((rel, cls + "Args"))
            if args:
                compare(f"{token} inputs", args[1], res.get("inputProperties", {}),
                        args[2], res.get("requiredInputs", []))
            state = sdk.get((rel, "_" + cls + "State"))
            if state:
                compare(f"{token} state", state[1], res.get("stateInputs", {}).get("properties", {}))
        elif token and token not in types and not token.startswith("pulumi:providers:"):
            problems.append(f"SDK token {token} is not in the schema")

        # Nested types: _inputs.py FooArgs / outputs.py Foo  ->  docker:index/Foo:Foo
        # (function types are lower-cased: docker:index/getFoo...:getFoo...; config types
        # live in docker:config/...).
        if rel in ("_inputs.py", "outputs.py", "config/outputs.py") and not cls.endswith("ArgsDict"):
            base = cls[:-4] if rel == "_inputs.py" and cls.endswith("Args") else cls
            if rel == "config/outputs.py":
                lower = base[0].lower() + base[1:]
                tok = f"docker:config/{lower}:{lower}"
            elif base.startswith("Get"):
                if rel == "outputs.py" and base.endswith("Result"):
                    base = base[:-len("Result")]
                lower = "g" + base[1:]
                tok = f"docker:index/{lower}:{lower}"
            else:
                tok = f"docker:index/{base}:{base}"
            if tok in NATIVE_ONLY:
                continue
            if tok in types:
                compare(tok, props, types[tok].get("properties", {}))
            else:
                problems.append(f"no schema type {tok} for SDK class {rel}:{cls}")

    provider_args = sdk.get(("provider.py", "ProviderArgs"))
    if provider_args:
        compare("provider inputs", provider_args[1], schema["provider"].get("inputProperties", {}))
    config = sdk.get(("config/vars.py", "_ExportableConfig"))
    if config:
        compare("config", config[1], schema.get("config", {}).get("variables", {}))

    for (rel, cls), (_, props, _) in sdk.items():
        if not (rel.startswith("get_") and cls.endswith("Result") and not cls.startswith("Awaitable")):
            continue
        root = pathlib.Path(sys.argv[1])
        m = re.search(r"invoke\(['\"]([^'\"]+)['\"]", (root / rel).read_text())
        if not m:
            continue
        if m.group(1) not in functions:
            problems.append(f"function {m.group(1)} is not in the schema")
            continue
        compare(f"{m.group(1)} result", props, functions[m.group(1)].get("outputs", {}).get("properties", {}))

    print(f"checked {checked} SDK classes against {sys.argv[2]}")
    for p in problems:
        print("MISMATCH:", p)
    print(f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
