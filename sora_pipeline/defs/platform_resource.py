"""`FalPlatformResource`: fal's platform API (billing events, request history, model registry, prices).

The admin key (`FAL_ADMIN_KEY`) is needed only for billing events; without it `fal_billing` prices fal's billable
units instead. Keys are secrets: registered for redaction, shown only as set/unset."""


import dagster as dg
from pydantic import Field

from sora_pipeline.redact import install_log_redaction, register_secret

from sora_pipeline.fal.limits import DEFAULT_MAX_JSON_BYTES
from sora_pipeline.fal.platform import DEFAULT_API_URL


class FalPlatformResource(dg.ConfigurableResource):
    """Where fal's platform API answers and the keys for it (pass keys as `EnvVar`s)."""

    api_url: str = Field(default=DEFAULT_API_URL, description="fal's platform API (SORA_FAL_API_URL)")
    key: str | None = Field(default=None, description="ordinary fal key (FAL_KEY): request history, prices")
    admin_key: str | None = Field(default=None, description="fal admin key (FAL_ADMIN_KEY): billing events")
    request_timeout: float = Field(default=30.0, gt=0, description="per HTTP call (seconds)")
    max_json_bytes: int = Field(default=DEFAULT_MAX_JSON_BYTES, ge=1, description="cap on one JSON answer "
                                "(SORA_MAX_JSON_BYTES)")

    def __repr__(self) -> str:  # never show keys
        return (f"FalPlatformResource(api_url={self.api_url!r}, key={'set' if self.key else 'unset'}, "
                f"admin_key={'set' if self.admin_key else 'unset'})")

    __str__ = __repr__

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        register_secret(self.key)
        register_secret(self.admin_key)
        install_log_redaction()

    def client(self, *, admin: bool = False):
        """A `sora_pipeline.fal.platform.PlatformClient` with the admin key (`admin`) or the ordinary one."""
        from sora_pipeline.fal.platform import PlatformClient

        return PlatformClient(self.api_url, self.admin_key if admin else self.key, timeout=self.request_timeout,
                              max_json_bytes=self.max_json_bytes)
