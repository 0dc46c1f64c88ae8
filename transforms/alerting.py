"""Alerting: one message when a problem opens, reminders and escalations while it lasts, one when
it resolves, on every configured channel.

Inputs: ``Alert`` values fired by the Airflow callbacks (plugins/hl7ics_airflow/alerts.py) and by
the monitoring checks (transforms/monitoring.py), ``AlertingConfig`` (``config/alerting.yaml``:
language, reminder interval, channels) and connection parameters looked up by connection id
(``resolve_connection``; outside Airflow, ``AIRFLOW_CONN_<ID>`` through ``connection_from_env``).
Outputs: the ``alert_state`` row of each problem key (migration 006), one ``ops_alert`` row per
message sent (``resolved_at`` set when the problem resolves), an e-mail (SMTP) and a JSON webhook
POST per message, in French or English.

Throttling, per key: the first fire opens the problem and sends; later fires are counted and
suppressed, except a reminder once ``reminder_minutes`` have passed since the last message and an
escalation when the severity rises (warning < error < critical); ``resolve`` sends one message and
closes the problem; the next fire of a resolved key opens a new problem. The decision is taken in
one transaction on the key's row (INSERT ... ON CONFLICT, then the row is locked), so concurrent
workers firing the same key send one message between them.

Alerts carry codes and numbers only, never patient data: every text field is cut short and
stripped of control characters, params keep scalars only, and the callers reduce exceptions from
outside the project to their class name. A channel that fails is logged (class of the error only)
and never stops the other channels nor raises into the caller. No Airflow import here.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import dataclasses
import urllib.request
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from .config import ConfigError, read_yaml

log = logging.getLogger(__name__)

SEVERITIES = ("warning", "error", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
LANGUAGES = ("fr", "en")
CHANNEL_TYPES = ("ops_alert", "email", "webhook")
NETWORK_TIMEOUT = 10.0  # seconds, for every SMTP and HTTP call: a dead channel must not hang a task
LANG_ENV = "HL7ICS_ALERT_LANG"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_TEXT_LIMIT = 200     # a code, a class name, a path or a URL fits; free text does not belong here
_DETAIL_LIMIT = 500   # the project's own exception messages (see plugins/hl7ics_airflow/alerts.py)


@dataclass
class Alert:
    key: str                 # identity of the problem, e.g. "task:facility_batch_ingest.load:CHU-SO"
    kind: str                # template id (TEMPLATES)
    severity: str            # "warning" | "error" | "critical"
    facility_code: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    error_class: str | None = None
    log_url: str | None = None
    params: dict = field(default_factory=dict)   # codes and numbers only, never patient data


@dataclass(frozen=True)
class Channel:
    """One delivery channel from ``config/alerting.yaml``."""
    type: str                      # "ops_alert" | "email" | "webhook"
    conn_id: str | None = None     # Airflow connection id (email, webhook)
    min_severity: str = "warning"  # problems below this severity are not sent to this channel

    @property
    def label(self) -> str:
        return f"{self.type}:{self.conn_id}" if self.conn_id else self.type


@dataclass(frozen=True)
class AlertingConfig:
    language: str = "fr"               # "fr" | "en"; env HL7ICS_ALERT_LANG overrides the file
    reminder_minutes: int = 240        # a still-open problem is re-sent at most this often (0: never)
    channels: tuple = ()               # Channel values; ops_alert is always written, listed or not

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "AlertingConfig":
        """Read ``path`` (default ``<config dir>/alerting.yaml``). A missing file gives the defaults
        (ops_alert only). Errors name the file and the key."""
        if path is None:
            from .config import Settings

            path = Settings.load().config_dir / "alerting.yaml"
        p = Path(path)
        out: dict = {}
        if p.is_file():
            doc = read_yaml(p, str(p))
            data = doc.get("alerting") if isinstance(doc, dict) else None
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: expected a top-level 'alerting:' mapping")
            out = _parse_config(data, str(p))
        env_lang = os.environ.get(LANG_ENV)
        if env_lang:
            if env_lang.strip().lower() not in LANGUAGES:
                raise ConfigError(f"{LANG_ENV}: must be one of {', '.join(LANGUAGES)}")
            out["language"] = env_lang.strip().lower()
        return cls(**out)


def _parse_config(data: dict, origin: str) -> dict:
    known = {f.name for f in fields(AlertingConfig)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {', '.join(unknown)} under 'alerting' "
                          f"(known: {', '.join(sorted(known))})")
    out: dict = {}
    if "language" in data:
        lang = data["language"]
        if not isinstance(lang, str) or lang.strip().lower() not in LANGUAGES:
            raise ConfigError(f"{origin}: 'language' must be one of {', '.join(LANGUAGES)}")
        out["language"] = lang.strip().lower()
    if "reminder_minutes" in data:
        v = data["reminder_minutes"]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{origin}: 'reminder_minutes' must be a non-negative integer (0: no reminders)")
        out["reminder_minutes"] = v
    if "channels" in data:
        raw = data["channels"]
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise ConfigError(f"{origin}: 'channels' must be a list of mappings with a 'type'")
        out["channels"] = tuple(_parse_channel(c, f"{origin}: channels[{i}]") for i, c in enumerate(raw))
    return out


def _parse_channel(raw, where: str) -> Channel:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: each channel must be a mapping with a 'type'")
    typ = raw.get("type")
    if typ not in CHANNEL_TYPES:
        raise ConfigError(f"{where}: 'type' must be one of {', '.join(CHANNEL_TYPES)}")
    allowed = {"type", "min_severity"} | ({"conn_id"} if typ != "ops_alert" else set())
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for a {typ} channel")
    sev = raw.get("min_severity", "warning")
    if sev not in SEVERITIES:
        raise ConfigError(f"{where}: 'min_severity' must be one of {', '.join(SEVERITIES)}")
    conn_id = raw.get("conn_id")
    if typ != "ops_alert" and (not isinstance(conn_id, str) or not conn_id.strip()):
        raise ConfigError(f"{where}: a {typ} channel needs 'conn_id' (an Airflow connection id)")
    return Channel(typ, conn_id.strip() if conn_id else None, sev)


# --- connections -------------------------------------------------------------------------------

def _conn_dict(conn_type, host, port, login, password, schema, extra) -> dict:
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    if extra is not None and not isinstance(extra, dict):
        raise ValueError("extra must be a JSON object")
    if port not in (None, ""):
        port = int(port)
    return {"conn_type": conn_type or None, "host": host or None, "port": port or None, "login": login or None,
            "password": password or None, "schema": schema or None, "extra": extra or {}}


def connection_from_env(conn_id: str) -> dict | None:
    """The connection ``AIRFLOW_CONN_<ID>`` as Airflow would read it (a URI, or JSON with conn_type,
    host, port, login, password, schema, extra), without importing Airflow. None when it is not
    set or cannot be read (logged without its value, which holds secrets)."""
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        if raw.startswith("{"):
            d = json.loads(raw)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
            return _conn_dict(d.get("conn_type"), d.get("host"), d.get("port"), d.get("login"),
                              d.get("password"), d.get("schema"), d.get("extra"))
        return _parse_conn_uri(raw)
    except (ValueError, TypeError):
        log.warning("%s is not a valid connection URI or JSON; ignored", name)
        return None


def _parse_conn_uri(uri: str) -> dict:
    # Same reading as airflow.sdk Connection.from_uri: scheme = conn type ('-' becomes '_'), path =
    # schema, query = extra (or the JSON in __extra__); a second '://' puts a protocol in the host.
    if uri.count("://") > 2 or "://" not in uri:
        raise ValueError("invalid connection URI")
    scheme = urlsplit(uri).scheme
    conn_type = "postgres" if scheme == "postgresql" else scheme.replace("-", "_")
    rest = uri[len(scheme) + 3:]
    protocol = None
    if "://" in rest:
        protocol, rest = rest.split("://", 1)
        if "@" in protocol or ":" in protocol:
            raise ValueError("invalid connection URI")
    parts = urlsplit("//" + rest)
    host = unquote(parts.hostname or "") or None
    if host and protocol:
        host = f"{protocol}://{host}"
    extra = None
    if parts.query:
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        extra = query["__extra__"] if "__extra__" in query else query
    return _conn_dict(conn_type, host, parts.port, unquote(parts.username or ""), unquote(parts.password or ""),
                      unquote(parts.path[1:]) if parts.path else None, extra)


# --- messages ----------------------------------------------------------------------------------

# kind -> language -> (subject, sentence). Placeholders are Alert fields and params; a missing or
# None value renders as "?", so a template never fails on what a caller did not know.
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "task_failed": {
        "en": ("Task {dag_id}.{task_id} failed",
               "The task {task_id} of the DAG {dag_id} failed and will not be retried in this run."),
        "fr": ("Échec de la tâche {dag_id}.{task_id}",
               "La tâche {task_id} du DAG {dag_id} a échoué et ne sera pas relancée dans cette exécution."),
    },
    "task_retry": {
        "en": ("Task {dag_id}.{task_id} failed, retrying",
               "The task {task_id} of the DAG {dag_id} failed (try {try_number}) and will be retried."),
        "fr": ("Tâche {dag_id}.{task_id} en échec, nouvelle tentative",
               "La tâche {task_id} du DAG {dag_id} a échoué (tentative {try_number}) et sera relancée."),
    },
    "dag_failed": {
        "en": ("DAG run failed: {dag_id}",
               "The run {run_id} of the DAG {dag_id} failed (last task: {task_id})."),
        "fr": ("Échec de l'exécution du DAG {dag_id}",
               "L'exécution {run_id} du DAG {dag_id} a échoué (dernière tâche : {task_id})."),
    },
    "silence": {
        "en": ("No messages from {facility_code} for {minutes} min",
               "The facility {facility_code} has sent nothing for {minutes} minutes during its working hours "
               "(expected at least every {expected_minutes} minutes)."),
        "fr": ("Aucun message de {facility_code} depuis {minutes} min",
               "La formation sanitaire {facility_code} n'a rien envoyé depuis {minutes} minutes pendant ses "
               "heures d'activité (attendu au moins toutes les {expected_minutes} minutes)."),
    },
    "quarantine_spike": {
        "en": ("Quarantine spike: {facility_code} {message_type}",
               "{rate_pct}% of the {message_type} messages from {facility_code} ({source}) were quarantined "
               "in the last hour, against {baseline_pct}% usually."),
        "fr": ("Pic de quarantaine : {facility_code} {message_type}",
               "{rate_pct} % des messages {message_type} de {facility_code} ({source}) ont été mis en "
               "quarantaine au cours de la dernière heure, contre {baseline_pct} % habituellement."),
    },
    "ack_latency": {
        "en": ("Slow acknowledgements: {facility_code} {message_type} p95 {p95_ms} ms",
               "The 95th percentile of the acknowledgement time of {message_type} messages from "
               "{facility_code} is {p95_ms} ms, above the SLA of {sla_ms} ms."),
        "fr": ("Accusés de réception lents : {facility_code} {message_type} p95 {p95_ms} ms",
               "Le 95e centile du délai d'accusé de réception des messages {message_type} de "
               "{facility_code} est de {p95_ms} ms, au-dessus du SLA de {sla_ms} ms."),
    },
    "backlog_age": {
        "en": ("{count} messages waiting to be loaded for {oldest_minutes} min",
               "{count} messages received in real time are not loaded yet; the oldest has waited "
               "{oldest_minutes} minutes (threshold {threshold_minutes}). Check the mllp_realtime DAG."),
        "fr": ("{count} messages en attente de chargement depuis {oldest_minutes} min",
               "{count} messages reçus en temps réel ne sont pas encore chargés ; le plus ancien attend "
               "depuis {oldest_minutes} minutes (seuil {threshold_minutes}). Vérifier le DAG mllp_realtime."),
    },
    "tls_expiry": {
        "en": ("TLS certificate expires in {days_left} days",
               "The certificate {subject} ({file}) expires in {days_left} days. Renew it before then."),
        "fr": ("Le certificat TLS expire dans {days_left} jours",
               "Le certificat {subject} ({file}) expire dans {days_left} jours. Le renouveler avant."),
    },
    "disk_usage": {
        "en": ("Disk {path} {percent}% full",
               "The file system holding {path} is {percent}% full (threshold {threshold}%)."),
        "fr": ("Disque {path} plein à {percent} %",
               "Le système de fichiers de {path} est plein à {percent} % (seuil {threshold} %)."),
    },
    "unknown_facility": {
        "en": ("Messages from an unknown facility: {facility_code}",
               "Messages whose sending facility (MSH-4) {facility_code} is not in config/facilities.yaml "
               "were loaded and flagged; add the facility or correct the sender."),
        "fr": ("Messages d'une formation inconnue : {facility_code}",
               "Des messages dont la formation émettrice (MSH-4) {facility_code} n'est pas dans "
               "config/facilities.yaml ont été chargés et signalés ; ajouter la formation ou corriger "
               "l'émetteur."),
    },
    "routing_held": {
        "en": ("Copies for {destination} not sent",
               "Routing held {review} copies for {destination} for review (a code without a mapping) and could "
               "not build {failed} (codes: {codes}). They are not sent: fix the mapping or the route; held copies are "
               "routed again every 15 minutes (route_review and message_route hold them)."),
        "fr": ("Copies pour {destination} non envoyées",
               "Le routage a retenu {review} copies pour {destination} en revue (code sans correspondance) et n'a "
               "pas pu en construire {failed} (codes : {codes}). Elles ne partent pas : corriger la table de "
               "correspondance ou la route ; les copies retenues sont routées à nouveau toutes les 15 minutes "
               "(voir route_review et message_route)."),
    },
    "outbound_dead": {
        "en": ("Outbound delivery to {destination} gave up",
               "Message {message_id} could not be delivered to {destination} after {attempts} attempts "
               "(last error {last_error}); it is a dead letter. Fix the receiver, then run "
               "hl7ics outbound retry --dead-letter --destination {destination}."),
        "fr": ("Livraison vers {destination} abandonnée",
               "Le message {message_id} n'a pas pu être livré à {destination} après {attempts} tentatives "
               "(dernière erreur {last_error}) ; il est en lettre morte. Corriger le destinataire, puis lancer "
               "hl7ics outbound retry --dead-letter --destination {destination}."),
    },
    "dhis2_import": {
        "en": ("DHIS2 import of {period}: values ignored or in conflict",
               "DHIS2 ignored {ignored} value(s) and reported {conflicts} conflict(s) for period {period}; "
               "see the dhis2_export table and config/dhis2.yaml."),
        "fr": ("Import DHIS2 de {period} : valeurs ignorées ou en conflit",
               "DHIS2 a ignoré {ignored} valeur(s) et signalé {conflicts} conflit(s) pour la période {period} ; "
               "voir la table dhis2_export et config/dhis2.yaml."),
    },
    "dq_threshold": {
        "en": ("Data-quality threshold exceeded: {facility_code}",
               "{failed} of {validated} messages from {facility_code} failed data-quality checks; the batch "
               "is held in quarantine (DQ_THRESHOLD). Fix, then run hl7ics replay --reason DQ_THRESHOLD."),
        "fr": ("Seuil de qualité des données dépassé : {facility_code}",
               "{failed} messages sur {validated} de {facility_code} ont échoué aux contrôles de qualité ; "
               "le lot est retenu en quarantaine (DQ_THRESHOLD). Corriger, puis lancer "
               "hl7ics replay --reason DQ_THRESHOLD."),
    },
    "idsr_immediate": {
        "en": ("IDSR immediate notification: {disease} at {facility_code}",
               "{cases} case(s) of {disease} reported by {facility_code} (district {district}): a disease "
               "under immediate notification (IDSR)."),
        "fr": ("SIMR notification immédiate : {disease} à {facility_code}",
               "{cases} cas de {disease} signalé(s) par {facility_code} (district {district}) : maladie à "
               "notification immédiate (SIMR)."),
    },
}
GENERIC = {
    "en": ("Alert {kind}: {key}", "Problem {key} ({kind})."),
    "fr": ("Alerte {kind} : {key}", "Problème {key} ({kind})."),
}
# Words around the kind's text: state prefixes, severity names, the context lines.
WORDS = {
    "en": {
        "severity": {"warning": "WARNING", "error": "ERROR", "critical": "CRITICAL"},
        "resolved_tag": "RESOLVED",
        "prefix": {"opened": "", "escalated": "Escalated: ", "reminder": "Reminder: ", "resolved": "Resolved: "},
        "escalated": "The severity rose to {severity}.",
        "reminder": "Still open since {opened_at} UTC ({open_minutes} min, seen {occurrences} times).",
        "resolved": "Resolved at {resolved_at} UTC after {open_minutes} min (seen {occurrences} times).",
        "facility_code": "Facility", "dag_id": "DAG", "task_id": "Task", "run_id": "Run",
        "error_class": "Error", "detail": "Detail", "log_url": "Log", "key": "Alert key",
        "params": "Parameters", "yes": "yes", "no": "no",
    },
    "fr": {
        "severity": {"warning": "AVERTISSEMENT", "error": "ERREUR", "critical": "CRITIQUE"},
        "resolved_tag": "RÉSOLU",
        "prefix": {"opened": "", "escalated": "Aggravation : ", "reminder": "Rappel : ", "resolved": "Résolu : "},
        "escalated": "La gravité est passée à {severity}.",
        "reminder": "Toujours en cours depuis le {opened_at} UTC ({open_minutes} min, {occurrences} occurrences).",
        "resolved": "Résolu le {resolved_at} UTC après {open_minutes} min ({occurrences} occurrences).",
        "facility_code": "Formation", "dag_id": "DAG", "task_id": "Tâche", "run_id": "Exécution",
        "error_class": "Erreur", "detail": "Détail", "log_url": "Journal", "key": "Clé de l'alerte",
        "params": "Paramètres", "yes": "oui", "no": "non",
    },
}
_CONTEXT_FIELDS = ("facility_code", "dag_id", "task_id", "run_id", "error_class", "detail", "log_url")


class _Values(dict):
    def __missing__(self, key):
        return "?"


def _fmt(value, lang: str) -> str:
    if value is None:
        return "?"
    if isinstance(value, bool):
        return WORDS[lang]["yes" if value else "no"]
    if isinstance(value, float):
        s = f"{value:.1f}".removesuffix(".0")
        return s.replace(".", ",") if lang == "fr" else s
    return str(value)


def _clean_text(value, limit: int = _TEXT_LIMIT) -> str | None:
    if value is None:
        return None
    s = _CONTROL.sub(" ", str(value)).strip()
    return s[:limit] or None


def _clean_params(params) -> dict:
    out: dict = {}
    for k, v in (params or {}).items() if isinstance(params, dict) else ():
        if not isinstance(k, str) or not _PARAM_NAME.match(k):
            continue
        if isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in v):
            v = ", ".join(str(x) for x in v)
        if v is None or isinstance(v, (bool, int, float)):
            out[k] = v
        elif isinstance(v, str):
            out[k] = _clean_text(v, _DETAIL_LIMIT if k == "detail" else _TEXT_LIMIT)
        # anything else (objects, mappings) is dropped: params are codes and numbers
    return out


def _clean_alert(alert: Alert) -> Alert:
    key = _clean_text(alert.key)
    if not key:
        raise ValueError("an alert needs a key")
    if alert.severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
    return Alert(key=key, kind=_clean_text(alert.kind, 64) or "generic", severity=alert.severity,
                 facility_code=_clean_text(alert.facility_code, 64), dag_id=_clean_text(alert.dag_id),
                 task_id=_clean_text(alert.task_id), run_id=_clean_text(alert.run_id),
                 error_class=_clean_text(alert.error_class), log_url=_clean_text(alert.log_url, 500),
                 params=_clean_params(alert.params))


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def _naive_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    if now.tzinfo is not None:
        now = now.astimezone(timezone.utc).replace(tzinfo=None)
    return now.replace(microsecond=0)


def _parse_ts(value) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return _naive_utc(value)
    return datetime.strptime(str(value)[:19], "%Y-%m-%d %H:%M:%S")


def render_message(alert: Alert, state: str, language: str = "fr", *, opened_at: datetime | None = None,
                   occurrences: int | None = None, now: datetime | None = None) -> tuple[str, str, str]:
    """Subject, body and a one-line summary (for ``ops_alert.message``) of ``alert`` in ``state``
    ("opened", "escalated", "reminder" or "resolved"). Never raises on missing params."""
    lang = language if language in LANGUAGES else "fr"
    words = WORDS[lang]
    try:
        alert = _clean_alert(alert)  # callers outside the Alerter get the same cleaning
    except ValueError:  # no key or an unknown severity: still render what there is
        alert = Alert(**{**vars(alert), "params": _clean_params(alert.params)})
    values = _Values({k: _fmt(v, lang) for k, v in alert.params.items()})
    for f in ("key", "kind", "severity", "facility_code", "dag_id", "task_id", "run_id", "error_class", "log_url"):
        if getattr(alert, f) is not None:
            values[f] = _fmt(getattr(alert, f), lang)
    known = alert.kind in TEMPLATES
    subject_t, sentence_t = TEMPLATES[alert.kind][lang] if known else GENERIC[lang]
    try:
        subject, sentence = subject_t.format_map(values), sentence_t.format_map(values)
    except (ValueError, IndexError, AttributeError, KeyError):  # a malformed template must not lose the alert
        subject, sentence = GENERIC[lang][0].format_map(values), GENERIC[lang][1].format_map(values)
    if alert.facility_code and alert.facility_code not in subject:
        subject += f" [{alert.facility_code}]"
    tag = words["resolved_tag"] if state == "resolved" else words["severity"].get(alert.severity, alert.severity)
    subject = f"[hl7ics] [{tag}] {words['prefix'].get(state, '')}{subject}"

    lines = [sentence]
    detail = alert.params.get("detail")
    summary = [words["prefix"].get(state, "") + sentence] + ([detail] if detail else [])
    opened = _parse_ts(opened_at)
    now = _naive_utc(now)
    minutes = int((now - opened).total_seconds() // 60) if opened else None
    extra = _Values(severity=words["severity"].get(alert.severity, alert.severity),
                    opened_at=_ts(opened)[:16] if opened else "?", resolved_at=_ts(now)[:16],
                    open_minutes=_fmt(minutes, lang), occurrences=_fmt(occurrences, lang))
    if state in ("escalated", "reminder", "resolved"):
        lines.append(words[state].format_map(extra))
        summary.append(lines[-1])
    lines.append("")
    for f in _CONTEXT_FIELDS:
        v = detail if f == "detail" else getattr(alert, f)
        if v:
            lines.append(f"{words[f]}: {v}" if lang == "en" else f"{words[f]} : {v}")
    if not known:
        rest = {k: v for k, v in alert.params.items() if k != "detail"}
        if rest:
            listed = ", ".join(f"{k}={_fmt(v, lang)}" for k, v in sorted(rest.items()))
            lines.append(f"{words['params']}: {listed}" if lang == "en" else f"{words['params']} : {listed}")
    lines.append(f"{words['key']}: {alert.key}" if lang == "en" else f"{words['key']} : {alert.key}")
    return subject, "\n".join(lines), " ".join(summary)[:1000]


# --- channels ----------------------------------------------------------------------------------

class ChannelError(Exception):
    """A channel's configuration cannot be used (the message names the key, never a value)."""


def _truthy(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def send_email(conn: dict, subject: str, body: str, headers: dict | None = None,
               timeout: float = NETWORK_TIMEOUT) -> None:
    """Send one plain-text mail with smtplib. ``conn``: host, port, login, password; extra "from",
    "to" (list or comma-separated), "starttls" / "ssl" booleans."""
    import smtplib
    import ssl
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    extra = conn.get("extra") or {}
    sender = extra.get("from") or extra.get("from_email") or conn.get("login")
    to = extra.get("to") or []
    if isinstance(to, str):
        to = [a.strip() for a in re.split(r"[,;]", to) if a.strip()]
    if not sender or not to:
        raise ChannelError("the connection's extra needs 'from' and 'to'")
    use_ssl, starttls = _truthy(extra.get("ssl")), _truthy(extra.get("starttls"))
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain="hl7ics")
    msg["Auto-Submitted"] = "auto-generated"
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body, charset="utf-8", cte="quoted-printable")  # 7-bit safe for any relay
    # Headers up to RFC 5322's 998 characters: folding at 78 moves a long subject to a continuation
    # line, which some mail clients then show with a leading blank. The body is encoded already.
    msg.policy = msg.policy.clone(max_line_length=998)
    host = conn.get("host") or "localhost"
    port = conn.get("port") or (465 if use_ssl else 587 if starttls else 25)
    context = ssl.create_default_context()
    smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context) if use_ssl \
        else smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        if starttls and not use_ssl:
            smtp.starttls(context=context)
        if conn.get("login") and conn.get("password"):
            smtp.login(conn["login"], conn["password"])
        smtp.send_message(msg, from_addr=sender, to_addrs=to)


def webhook_url(conn: dict) -> str:
    """The URL to POST to: ``extra.url``, else an http connection's schema (http/https), host and
    port plus ``extra.path``."""
    extra = conn.get("extra") or {}
    url = extra.get("url")
    if not url:
        host = conn.get("host")
        if not host:
            raise ChannelError("the connection needs a host, or the full URL in extra 'url'")
        schema = conn.get("schema") or ""
        if "://" in host:
            base = host.rstrip("/")
        else:
            # Airflow's http connections keep the scheme in "schema"; https as the conn type also says it.
            scheme = schema if schema in ("http", "https") else "https" if conn.get("conn_type") == "https" else "http"
            base = f"{scheme}://{host}" + (f":{conn['port']}" if conn.get("port") else "")
        # A URI such as http://host:port/hooks/alerts puts the path in "schema": honour it as the path.
        path = str(extra.get("path") or (schema if schema not in ("", "http", "https") else ""))
        url = base + (path if not path or path.startswith("/") else "/" + path)
    if urlsplit(url).scheme not in ("http", "https"):
        raise ChannelError("the webhook URL must be http or https")
    return url


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects (urllib then raises HTTPError with the 3xx status). Followed, a POST
    became a GET without its body, reported as sent, and the Authorization header went along to
    the new address, possibly another host. A partner that moved is a configuration to fix."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def post_webhook(conn: dict, payload: dict, timeout: float = NETWORK_TIMEOUT) -> int:
    """POST ``payload`` as JSON; returns the HTTP status (urllib raises on 4xx/5xx). Extra
    "headers" (a mapping) is sent as is, e.g. an Authorization token; a login adds Basic auth."""
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "hl7ics-alerting"}
    extra_headers = (conn.get("extra") or {}).get("headers") or {}
    if not isinstance(extra_headers, dict):
        raise ChannelError("extra 'headers' must be a mapping")
    headers.update({str(k): str(v) for k, v in extra_headers.items()})
    if conn.get("login") and not any(k.lower() == "authorization" for k in headers):
        token = base64.b64encode(f"{conn['login']}:{conn.get('password') or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    req = urllib.request.Request(webhook_url(conn), data=data, headers=headers, method="POST")
    with urllib.request.build_opener(NoRedirect).open(req, timeout=timeout) as resp:
        resp.read(4096)
        return resp.status


# --- the alerter -------------------------------------------------------------------------------

_DESCRIBED = ("facility_code", "dag_id", "task_id", "run_id", "error_class", "log_url")
_STATE_COLUMNS = ("kind", "severity", "facility_code", "dag_id", "task_id", "run_id", "error_class", "log_url",
                  "params", "opened_at", "last_sent_at", "occurrences")


class Alerter:
    """Fire, throttle and resolve alerts for one warehouse (``engine``).

    ``resolve_connection(conn_id)`` returns a dict (host, port, login, password, schema, extra,
    conn_type) or None; the default reads ``AIRFLOW_CONN_<ID>``. ``config`` defaults to
    ``AlertingConfig.load()``, read only when a message has to go out (a recovery callback for a
    key that is not open costs one primary-key lookup).
    """

    def __init__(self, engine, config: AlertingConfig | None = None, resolve_connection=None):
        self.engine = engine
        self._config = config
        self._resolve_connection = resolve_connection or connection_from_env
        self._connections: dict[str, dict | None] = {}
        self._pg = engine.dialect.name == "postgresql"

    @property
    def config(self) -> AlertingConfig:
        if self._config is None:
            try:
                self._config = AlertingConfig.load()
            except ConfigError as exc:
                # A typo in alerting.yaml must not silence every alert: keep ops_alert rows (and the
                # error, which names file and key, in the log) until it is fixed.
                log.error("%s; alerts go to ops_alert only until it is fixed", exc)
                self._config = AlertingConfig()
        return self._config

    # -- public API --

    def fire(self, alert: Alert, now: datetime | None = None) -> str:
        """Record an occurrence of ``alert.key``; send when it opens, escalates or is due a reminder.
        Returns "opened", "escalated", "reminder" or "suppressed"."""
        alert = _clean_alert(alert)
        now = _naive_utc(now)
        try:
            with self.engine.begin() as conn:
                state, prev, row = self._decide(conn, alert, now)
                if state == "reminder" and _RANK[alert.severity] < _RANK.get(prev, 0):
                    # A lower-severity occurrence (a retry of a task that already failed) reminds
                    # of the problem at its open severity: the channels that got it get this too.
                    alert = dataclasses.replace(alert, severity=prev)
                if state != "suppressed":
                    _, _, summary = render_message(alert, state, self.config.language, opened_at=row["opened_at"],
                                                   occurrences=row["occurrences"], now=now)
                    self._insert_ops_alert(conn, alert, summary, now)
        except SQLAlchemyError as exc:
            # Without its state the alerter cannot throttle, but the warehouse being down is exactly
            # when operators must hear about it: send, unthrottled, rather than stay silent.
            log.error("alert state unavailable (%s); sending %s without throttling", type(exc).__name__, alert.key)
            state, prev, row = "opened", None, {"opened_at": now, "occurrences": 1}
        if state != "suppressed":
            self._send(alert, state, prev, row["opened_at"], row["occurrences"], now)
        else:
            log.debug("alert %s suppressed (still open)", alert.key)
        return state

    def resolve(self, key: str, now: datetime | None = None, notify: bool = True, **fields) -> bool:
        """Close the open problem ``key`` and send one resolve message. ``fields`` (run_id, log_url,
        facility_code, dag_id, task_id, error_class; params merged) describe the recovery. True when
        a problem was open and closed; False when nothing was open. ``notify=False`` closes it
        without a message: a notice nobody has to act on any more (last month's IDSR case)."""
        key = _clean_text(key)
        if not key or self._lookup_state(key) != "open":
            return False
        now = _naive_utc(now)
        with self.engine.begin() as conn:
            done = conn.execute(text(
                "UPDATE alert_state SET state = 'resolved', resolved_at = :now, messages = messages + 1, "
                "updated_at = :now WHERE alert_key = :k AND state = 'open'"), {"k": key, "now": _ts(now)}).rowcount
            if done != 1:
                return False  # another worker resolved it first
            conn.execute(text("UPDATE ops_alert SET resolved_at = :now WHERE alert_key = :k AND resolved_at IS NULL"),
                         {"k": key, "now": _ts(now)})
            row = conn.execute(text(f"SELECT {', '.join(_STATE_COLUMNS)} FROM alert_state WHERE alert_key = :k"),
                               {"k": key}).mappings().one()
        if not notify:
            return True
        described = {f: row[f] for f in _DESCRIBED}
        described.update({k: v for k, v in fields.items() if k in _DESCRIBED and v is not None})
        params = {**(json.loads(row["params"]) if row["params"] else {}), **(fields.get("params") or {})}
        alert = _clean_alert(Alert(key=key, kind=row["kind"], severity=row["severity"], params=params, **described))
        self._send(alert, "resolved", row["severity"], row["opened_at"], row["occurrences"], now)
        return True

    def open_keys(self, prefix: str = "") -> list[str]:
        """Keys of the open problems starting with ``prefix``, sorted."""
        return [p["key"] for p in self.open_problems(prefix)]

    def open_problems(self, prefix: str = "") -> list[dict]:
        """The open problems whose key starts with ``prefix``, sorted by key: key, kind, severity,
        facility_code, dag_id, task_id, run_id (of the last occurrence), opened_at, last_seen_at,
        occurrences."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        cols = ("alert_key", "kind", "severity", "facility_code", "dag_id", "task_id", "run_id", "opened_at",
                "last_seen_at", "occurrences")
        rows = self._read(f"SELECT {', '.join(cols)} FROM alert_state WHERE state = 'open' "
                          "AND alert_key LIKE ? ESCAPE '\\' ORDER BY alert_key", (like,))
        return [{"key": r[0], **dict(zip(cols[1:7], r[1:7])), "opened_at": _parse_ts(r[7]),
                 "last_seen_at": _parse_ts(r[8]), "occurrences": r[9]} for r in rows]

    # -- state --

    def _read(self, sql: str, params: tuple) -> list[tuple]:
        # Reads go through a plain driver cursor: on SQLite a SQLAlchemy transaction begins
        # IMMEDIATE (a write lock) for what is, on every task success, a read of one primary key.
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql.replace("?", "%s") if self._pg else sql, params)
            rows = cur.fetchall()
            cur.close()
            return rows
        finally:
            raw.close()

    def _lookup_state(self, key: str) -> str | None:
        rows = self._read("SELECT state FROM alert_state WHERE alert_key = ?", (key,))
        return rows[0][0] if rows else None

    def _decide(self, conn, alert: Alert, now: datetime) -> tuple[str, str | None, dict]:
        """The transition for one occurrence, applied to ``alert_state``: (state, severity sent
        before, the row's opened_at/occurrences)."""
        p = {"k": alert.key, "kind": alert.kind, "sev": alert.severity, "fac": alert.facility_code,
             "dag": alert.dag_id, "task": alert.task_id, "run": alert.run_id, "err": alert.error_class,
             "url": alert.log_url, "params": json.dumps(alert.params, sort_keys=True, ensure_ascii=False),
             "now": _ts(now)}
        inserted = conn.execute(text(
            "INSERT INTO alert_state (alert_key, state, kind, severity, facility_code, dag_id, task_id, run_id, "
            "error_class, log_url, params, opened_at, last_seen_at, last_sent_at, resolved_at, occurrences, "
            "messages, updated_at) VALUES (:k, 'open', :kind, :sev, :fac, :dag, :task, :run, :err, :url, :params, "
            ":now, :now, :now, NULL, 1, 1, :now) ON CONFLICT (alert_key) DO NOTHING"), p).rowcount
        if inserted == 1:
            return "opened", None, {"opened_at": now, "occurrences": 1}
        # The row exists: lock it (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers)
        # so a concurrent fire waits for this decision and then sees it.
        row = conn.execute(text(
            "SELECT state, severity, opened_at, last_sent_at, occurrences FROM alert_state WHERE alert_key = :k"
            + (" FOR UPDATE" if self._pg else "")), {"k": alert.key}).mappings().one()
        latest = ("kind = :kind, facility_code = COALESCE(:fac, facility_code), dag_id = COALESCE(:dag, dag_id), "
                  "task_id = COALESCE(:task, task_id), run_id = COALESCE(:run, run_id), "
                  "error_class = COALESCE(:err, error_class), log_url = COALESCE(:url, log_url), params = :params")
        if row["state"] != "open":
            conn.execute(text(
                f"UPDATE alert_state SET state = 'open', severity = :sev, {latest}, opened_at = :now, "
                "last_seen_at = :now, last_sent_at = :now, resolved_at = NULL, occurrences = 1, messages = 1, "
                "updated_at = :now WHERE alert_key = :k"), p)
            return "opened", None, {"opened_at": now, "occurrences": 1}
        prev = row["severity"]
        last_sent = _parse_ts(row["last_sent_at"])
        reminder = self.config.reminder_minutes
        if _RANK[alert.severity] > _RANK.get(prev, 0):
            state = "escalated"
        elif reminder > 0 and (now - last_sent).total_seconds() >= reminder * 60:
            state = "reminder"
        else:
            state = "suppressed"
        p["sev"] = alert.severity if state == "escalated" else prev
        sent = "" if state == "suppressed" else ", last_sent_at = :now, messages = messages + 1"
        conn.execute(text(
            f"UPDATE alert_state SET severity = :sev, {latest}, last_seen_at = :now, occurrences = occurrences + 1"
            f"{sent}, updated_at = :now WHERE alert_key = :k"), p)
        return state, prev, {"opened_at": _parse_ts(row["opened_at"]), "occurrences": row["occurrences"] + 1}

    def _insert_ops_alert(self, conn, alert: Alert, summary: str, now: datetime) -> None:
        conn.execute(text(
            "INSERT INTO ops_alert (created_at, dag_id, task_id, run_id, facility_code, severity, error_class, "
            "message, log_url, alert_key) VALUES (:t, :d, :k, :r, :f, :s, :c, :m, :u, :key)"),
            {"t": _ts(now), "d": alert.dag_id, "k": alert.task_id, "r": alert.run_id, "f": alert.facility_code,
             "s": alert.severity, "c": alert.error_class, "m": summary, "u": alert.log_url, "key": alert.key})

    # -- delivery --

    def _connection(self, conn_id: str) -> dict | None:
        if conn_id not in self._connections:
            try:
                conn = self._resolve_connection(conn_id)
            except Exception as exc:  # a secrets backend hiccup: skip this channel, keep the others
                log.warning("alert channel connection %s could not be read (%s); channel skipped",
                            conn_id, type(exc).__name__)
                conn = None
            else:
                if conn is None:
                    log.info("alert channel connection %s is not defined; channel skipped", conn_id)
            self._connections[conn_id] = conn
        return self._connections[conn_id]

    def _send(self, alert: Alert, state: str, prev: str | None, opened_at, occurrences, now: datetime) -> None:
        lang = self.config.language
        rendered: dict[str, tuple[str, str, str]] = {}
        ref = "<%s@hl7ics>" % hashlib.sha256(f"{alert.key}|{_parse_ts(opened_at)}".encode()).hexdigest()[:32]
        for ch in self.config.channels:
            if ch.type == "ops_alert" or _RANK[alert.severity] < _RANK[ch.min_severity]:
                continue
            # A channel that filtered out the lower severity never saw the problem open: for it,
            # an escalation or a reminder is the opening message.
            eff = state
            if state in ("escalated", "reminder") and (prev is None or _RANK[prev] < _RANK[ch.min_severity]):
                eff = "opened"
            if eff not in rendered:
                rendered[eff] = render_message(alert, eff, lang, opened_at=opened_at, occurrences=occurrences, now=now)
            subject, body, _ = rendered[eff]
            conn = self._connection(ch.conn_id)
            if conn is None:
                continue
            try:
                if ch.type == "email":
                    send_email(conn, subject, body, {"X-HL7ICS-Alert-Key": alert.key, "X-HL7ICS-Alert-State": eff,
                                                     "References": ref, "In-Reply-To": ref})
                else:
                    post_webhook(conn, {"text": subject + "\n" + body, "alert": {
                        "key": alert.key, "kind": alert.kind, "severity": alert.severity, "state": eff,
                        "facility_code": alert.facility_code, "dag_id": alert.dag_id, "task_id": alert.task_id,
                        "run_id": alert.run_id, "error_class": alert.error_class, "log_url": alert.log_url,
                        "params": alert.params, "language": lang}})
                log.info("alert %s (%s) sent to %s", alert.key, eff, ch.label)
            except Exception as exc:  # one channel down must not stop the others nor fail the caller
                status = getattr(exc, "code", None) if ch.type == "webhook" else None  # urllib's HTTPError
                log.warning("alert %s (%s) could not be sent to %s: %s%s", alert.key, eff, ch.label,
                            type(exc).__name__, f" (HTTP {status})" if isinstance(status, int) else "")


__all__ = ["Alert", "AlertingConfig", "Alerter", "Channel", "ChannelError", "connection_from_env", "post_webhook",
           "render_message", "send_email", "webhook_url", "SEVERITIES", "TEMPLATES"]
