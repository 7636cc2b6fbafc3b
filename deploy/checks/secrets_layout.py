"""deploy/k8s/generate-secrets.py as a module, for the checks that hold
the manifests and the chart values to the Secrets it writes (its file name
is not an importable module name, so it is loaded by path)."""

import importlib.util
import os

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "k8s",
                    "generate-secrets.py")


def generator():
    """The module: `layout(actors, provisioning)` is {Secret: [files]}."""
    spec = importlib.util.spec_from_file_location("falconpay_generate_secrets", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
