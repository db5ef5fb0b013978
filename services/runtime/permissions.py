"""Who may do what on NATS: a user per service, one for the dashboard, two for people, written out as
nats.conf's authorization block (`tradeflow permissions` prints it; nats.conf, the Compose deployment and
the Kubernetes manifests hold the same text, and `tradeflow up` writes it for the replicas it runs).

A service may use only its own durable consumers, through the JetStream API subjects that name them (next
message, info) and the acks of its own consumers' deliveries (`$JS.ACK.PIPELINE.<durable>.>`); read the
streams (info, a message by sequence), publish its own outputs and its own dead letters, and receive on its
own inbox prefix. Nothing of another service's, and no stream or consumer created, updated or deleted:
`tradeflow init`, run with the operator user, declares them before the services start. A stateful service
also makes, reads and deletes one short-lived consumer of its own for its state rebuild (`<durable>-rebuild`).

- operator: everything (provisioning, purge, redrive, replay): the `tradeflow` commands use it.
- injector: publishes test events on pipeline subjects and reads; nothing else.
- dashboard: watches the pipeline, lists, pauses and resumes consumers, asks the services, and redrives a
  dead letter (publishes it again on its pipeline subject and deletes it from the DLQ); it cannot delete or
  purge a stream or a consumer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from contracts.subjects import ADVISORY_STREAM, DLQ_STREAM, PIPELINE_STREAM, PIPELINE_SUBJECTS
from services.runtime.dedup import done_key_prefix

OPERATOR, INJECTOR, DASHBOARD = "operator", "injector", "dashboard"

# what each service publishes, besides its dead letters (dlq.<service>.>)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "data": ("data_ready.>",),
    "strategy": ("signals_ready.>",),
    "quant": ("validated_ready.>", "rejected.quant.>"),
    "risk": ("approved_ready.>", "rejected.risk.>"),
    "execution": ("executed_ready.>",),
    "audit": (),
    "recorder": (),
}
STATEFUL = ("strategy", "quant", "risk", "execution", "audit")   # rebuild their state at start-up
CONSUMING = ("strategy", "quant", "risk", "execution", "audit", "recorder")
SERVICE_USERS = tuple(OUTPUTS)
# the durables of the Compose deployment's scaled profile (deploy/compose/scaled.yaml: strategy as 2 replicas),
# which the repository's nats.conf allows beside the single strategy's
COMPOSE_DURABLES = {"strategy": ("strategy", "strategy-p0of2", "strategy-p1of2")}
USERS = (*SERVICE_USERS, DASHBOARD, OPERATOR, INJECTOR)

_READ_STREAMS = [f"$JS.API.STREAM.INFO.{PIPELINE_STREAM}", f"$JS.API.STREAM.MSG.GET.{PIPELINE_STREAM}"]
_MICRO = ["$SRV.PING", "$SRV.INFO", "$SRV.STATS"]


def inbox_prefix(user: str) -> str:
    """The inbox prefix a user's connection takes its reply subjects from, the only inboxes it may receive on."""
    return f"_INBOX_{user}"


def rebuild_consumer(durable: str) -> str:
    """The name of the consumer a stateful service's state rebuild reads the stream with."""
    return f"{durable}-rebuild"


def advisory_consumer(durable: str) -> str:
    """The durable on ADVISORIES that says which of `durable`'s messages JetStream gave up on."""
    return f"{durable}-advisories"


def _answers(user: str) -> list[str]:
    """What a service (the dashboard too) answers on: the micro protocol, to all and to it, and its endpoints."""
    return [*_MICRO, f"$SRV.*.{user}", f"$SRV.*.{user}.*", f"tradeflow.{user}.>"]


def _consumer(stream: str, name: str) -> list[str]:
    return [f"$JS.API.CONSUMER.INFO.{stream}.{name}", f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}"]


def service_permissions(service: str, durables: Sequence[str] = ()) -> dict:
    """The permissions of `service`'s user, for its durables on PIPELINE (itself, or its replicas')."""
    if service not in OUTPUTS:
        raise KeyError(f"no NATS user for service {service!r}")
    publish = [*OUTPUTS[service], f"dlq.{service}.>"]
    if service == "data":
        publish += _READ_STREAMS   # where each symbol's feed left off
    else:
        publish += [*_READ_STREAMS, f"$JS.API.STREAM.INFO.{ADVISORY_STREAM}",
                    f"$JS.API.STREAM.MSG.GET.{ADVISORY_STREAM}", f"$JS.API.STREAM.MSG.GET.{DLQ_STREAM}"]
        for durable in durables or (service,):
            publish += [*_consumer(PIPELINE_STREAM, durable), f"$JS.ACK.{PIPELINE_STREAM}.{durable}.>"]
            advisories = advisory_consumer(durable)
            publish += [*_consumer(ADVISORY_STREAM, advisories), f"$JS.ACK.{ADVISORY_STREAM}.{advisories}.>"]
            if service in STATEFUL:
                rebuild = rebuild_consumer(durable)
                publish += [f"$JS.API.CONSUMER.CREATE.{PIPELINE_STREAM}.{rebuild}",
                            f"$JS.API.CONSUMER.CREATE.{PIPELINE_STREAM}.{rebuild}.>",
                            f"$JS.API.CONSUMER.DELETE.{PIPELINE_STREAM}.{rebuild}",
                            *_consumer(PIPELINE_STREAM, rebuild)]
    subscribe = [f"{inbox_prefix(service)}.>", *_answers(service)]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": True}


def dashboard_permissions() -> dict:
    """Watch, list, pause and resume, read a pipeline message by sequence, ask the services, redrive a dead letter."""
    publish = [f"$JS.API.STREAM.INFO.{PIPELINE_STREAM}", f"$JS.API.STREAM.INFO.{DLQ_STREAM}",
               f"$JS.API.CONSUMER.LIST.{PIPELINE_STREAM}", f"$JS.API.CONSUMER.NAMES.{PIPELINE_STREAM}",
               f"$JS.API.CONSUMER.INFO.{PIPELINE_STREAM}.*", f"$JS.API.CONSUMER.PAUSE.{PIPELINE_STREAM}.*",
               # a stage's oldest waiting event, for the journey deadline (services/runtime/journey.py)
               f"$JS.API.STREAM.MSG.GET.{PIPELINE_STREAM}",
               # reading the DLQ: an ordered consumer of its own (nats-py names it), and messages by sequence
               f"$JS.API.CONSUMER.CREATE.{DLQ_STREAM}", f"$JS.API.CONSUMER.CREATE.{DLQ_STREAM}.>",
               f"$JS.API.CONSUMER.DELETE.{DLQ_STREAM}.*",
               f"$JS.API.CONSUMER.INFO.{DLQ_STREAM}.*", "$JS.FC.>",
               f"$JS.API.STREAM.MSG.GET.{DLQ_STREAM}", f"$JS.API.STREAM.MSG.DELETE.{DLQ_STREAM}",
               "$SRV.>", "tradeflow.>", *[s for s in PIPELINE_SUBJECTS if not s.startswith("rejected")]]
    subscribe = [f"{inbox_prefix(DASHBOARD)}.>", *PIPELINE_SUBJECTS, "dlq.>", *_answers(DASHBOARD)]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": True}


def injector_permissions() -> dict:
    """Publish test events on the pipeline's subjects; read streams, consumers and messages; nothing else."""
    publish = [*PIPELINE_SUBJECTS, "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST",
               "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*", "$JS.API.DIRECT.GET.>",
               "$JS.API.CONSUMER.NAMES.*", "$JS.API.CONSUMER.LIST.*", "$JS.API.CONSUMER.INFO.*.*"]
    subscribe = ["_INBOX.>", *PIPELINE_SUBJECTS, "dlq.>"]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def permissions(durables: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict | None]:
    """Every user's permissions (None: the operator, who may do everything); `durables`: the PIPELINE
    durables of services run as replicas, by service."""
    durables = durables or {}
    out: dict[str, dict | None] = {s: service_permissions(s, durables.get(s, ())) for s in SERVICE_USERS}
    return out | {DASHBOARD: dashboard_permissions(), OPERATOR: None, INJECTOR: injector_permissions()}


def _block(perms: dict) -> list[str]:
    lines = ["      permissions: {"]
    for key, value in perms.items():
        if isinstance(value, bool):
            lines.append(f"        {key}: {'true' if value else 'false'}")
            continue
        lines.append(f"        {key}: {{ allow: [")
        lines += [f'          "{subject}"' for subject in value["allow"]]
        lines.append("        ] }")
    return [*lines, "      }"]


def authorization(durables: Mapping[str, Sequence[str]] | None = None) -> str:
    """nats.conf's authorization block: each user's password from nats-server's environment
    (TRADEFLOW_NATS_PASSWORD_<USER>), and its permissions."""
    lines = ["authorization {", "  users = ["]
    for user, perms in permissions(durables).items():
        entry = f"    {{ user: {user}, password: $TRADEFLOW_NATS_PASSWORD_{user.upper()}"
        lines += [entry, *_block(perms), "    }"] if perms else [entry + " }"]
    return "\n".join([*lines, "  ]", "}"]) + "\n"


REDIS_USERS = (*SERVICE_USERS, DASHBOARD, OPERATOR)


def redis_acl(user: str, password: str) -> str:
    """A Redis ACL rule (the text after `user `): a service may read and write only its own dedup keys and the
    shared cache, run its scripts by hash and nothing dangerous; the operator may do everything. The dedup
    keys are granted under both their names, with and without the hash tag, so that a service can move the
    marks of the older layout at an upgrade (services/runtime/dedup.py)."""
    if user == OPERATOR:
        return f"{user} on >{password} ~* &* +@all"
    return (f"{user} on >{password} resetkeys ~{done_key_prefix(user)}* ~tradeflow:done:{user}:* "
            "~tradeflow:cache:* +@read +@write +@connection +evalsha +script|load -@dangerous")


BEGIN = ("# --- authorization: written by `tradeflow permissions` (services/runtime/permissions.py); "
         "do not edit by hand ---")
END = "# --- end of authorization ---"


def with_authorization(conf: str, durables: Mapping[str, Sequence[str]] | None = None) -> str:
    """`conf` (nats.conf's text) with its authorization section written anew; ValueError if it has none."""
    start, end = conf.find(BEGIN), conf.find(END)
    if start < 0 or end < start:
        raise ValueError("this nats.conf has no authorization section (its markers are missing)")
    return conf[:start] + BEGIN + "\n" + authorization(durables) + conf[end:]
