"""The apply steps of the Kubernetes and KServe exports, and the registry's Secret.

`apply_steps(needs)`: the Secrets first, then (with model mounts) the `berth-models` claim
and the copy of the models into it through a helper pod, then `kubectl apply -f DIR`.

The steps are pasted into a root shell on the berth host, so every value in them is
shell-quoted (`shlex.quote`), and no secret ever reaches a command's argv (a process list
shows argv to every user): the registry's `.dockerconfigjson` is built by shell builtins
(`printf`) from the password file's contents and piped into `kubectl create secret generic
--from-file=.dockerconfigjson=/dev/stdin`, never `--docker-password=...`.
"""

from __future__ import annotations

from shlex import quote
from typing import Final

from config.image_ref import parse_image_ref
from config.spec import DeploymentSpec
from daemon.export.kube_mounts import (
    BERTH_MODELS,
    BERTH_SECRETS,
    MODELS_CLAIM,
    PodNeeds,
    SecretNeeded,
    secret_name,
    secrets_note,
)

FILL_POD: Final = "berth-models-fill"
FILL_IMAGE: Final = "docker.io/library/busybox:1.37"


def apply_steps(needs: PodNeeds) -> list[str]:
    """The Secrets, then the model store filled (with model mounts), then the apply."""
    steps = [s.create for s in needs.secrets]
    if needs.models:
        steps.append(f"kubectl apply -f DIR/pvc-{MODELS_CLAIM}.yaml")
        steps.append(_FILL_POD)
        steps.append(f"kubectl wait --for=condition=Ready pod/{FILL_POD} --timeout=10m")
        steps.append(
            "On the berth host, as root (the model store is root's), copy the model(s) into "
            "the claim (tar -h follows a model that is a link to another disk):"
        )
        for source in needs.models:
            steps.append(
                f"tar -C {BERTH_MODELS} -chf - {quote(source)} | "
                f"kubectl exec -i {FILL_POD} -- tar -C /models -xf -"
            )
        steps.append(f"kubectl delete pod {FILL_POD}")
    steps.append("kubectl apply -f DIR")
    return steps


# A one-off pod that mounts the model store's claim, to copy the models in (kubectl exec).
_FILL_POD: Final = f"""kubectl apply -f - <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: {FILL_POD}
spec:
  restartPolicy: Never
  containers:
  - name: fill
    image: {FILL_IMAGE}
    command: ["sleep", "86400"]
    volumeMounts:
    - {{name: models, mountPath: /models}}
  volumes:
  - name: models
    persistentVolumeClaim: {{claimName: {MODELS_CLAIM}}}
EOF"""


def registry_secret(spec: DeploymentSpec, out: PodNeeds) -> str:
    """The image pull Secret's name; its kubectl line goes into `out.secrets`."""
    r = spec.registry
    assert r is not None
    owner = "the registry's credentials"
    name = secret_name("registry", f"{spec.name}-registry", owner, "registry", out)
    try:
        server = parse_image_ref(spec.image).domain or "docker.io"
    except ValueError:
        server = "REGISTRY"
    if r.auth_file is not None:
        create = (
            f"kubectl create secret generic {quote(name)} --type=kubernetes.io/dockerconfigjson "
            f"--from-file={quote(f'.dockerconfigjson={r.auth_file}')}"
        )
    else:
        if r.password_file is not None:
            password_file = r.password_file
        else:
            assert r.password is not None
            secrets_note(out)
            password_file = f"{BERTH_SECRETS}/{r.password.name}"
        assert r.username is not None
        create = docker_config_line(name, server, r.username, password_file)
    out.secrets.append(SecretNeeded(name, create))
    return name


def docker_config_line(name: str, server: str, username: str, password_file: str) -> str:
    """A shell line that makes a dockerconfigjson Secret with the password read from
    `password_file`: only builtins (printf) hold it, and it reaches kubectl on stdin."""
    password = f'"$(cat {quote(password_file)})"'
    auth = f"\"$(printf '%s:%s' {quote(username)} {password} | base64 | tr -d '\\n')\""
    config = quote('{"auths":{"%s":{"auth":"%s"}}}')
    return (
        f"printf {config} {quote(server)} {auth} | kubectl create secret generic {quote(name)} "
        "--type=kubernetes.io/dockerconfigjson --from-file=.dockerconfigjson=/dev/stdin"
    )
