"""Print, as JSON, the resource plugins that installed packages declare in a pulumi-plugin.json
beside their code (how generated provider SDKs announce their provider).

Run by our language host (embedded in it) before every preview, update and destroy, or, for
an update or preview, by the interpreter started ahead for the program (the exec helper in
toolchain/python-host/, beside which it is installed). So it looks only where such a file
lives, <sys.path entry>/<package>/pulumi-plugin.json, instead of reading every installed
distribution's file list (~0.1 s of CPU with ~120 packages). Package metadata is read only for
a file that names no plugin or version.
"""

import json
import os
import sys


def declared_plugins(path_entries):
    found, owners = [], None
    for entry in path_entries:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(entry or ".", name, "pulumi-plugin.json")) as declaration:
                    data = json.load(declaration)
            except (OSError, ValueError):
                continue
            if not isinstance(data, dict) or not data.get("resource"):
                continue
            if not data.get("name") or not data.get("version"):
                import importlib.metadata as md

                if owners is None:
                    owners = md.packages_distributions()
                dist = (owners.get(name) or [name])[0]
                pkg = dist.lower().replace("_", "-")
                data["name"] = data.get("name") or (pkg[len("pulumi-"):] if pkg.startswith("pulumi-") else pkg)
                try:
                    data["version"] = data.get("version") or md.version(dist)
                except md.PackageNotFoundError:
                    pass
            data["module"] = name  # the host preloads it before the program runs
            found.append(data)
    return found


if __name__ == "__main__":
    print(json.dumps(declared_plugins(sys.path[1:])))
