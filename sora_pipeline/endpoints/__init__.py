"""fal endpoints as data: one profile per endpoint (input schema, catalog mapping, output, price, video shape).

`get_profile(endpoint_id)` returns the `EndpointProfile` of a known endpoint (`registry`); `openapi` converts fal's
OpenAPI documents and prices to profile sections and back; `price_check` holds the price rules. The tool that lists
and refreshes the profiles is `python -m sora_pipeline.endpoint_tools` (docs/endpoints.md)."""

from .endpoint_set import EndpointSet
from .profile import EndpointProfile, FieldSpec
from .registry import (DEFAULT_ENDPOINT_ID, PROFILES_ENV, BadProfile, UnknownEndpoint, get_profile, known_endpoints,
                       profiles)

__all__ = ["DEFAULT_ENDPOINT_ID", "PROFILES_ENV", "BadProfile", "EndpointProfile", "EndpointSet", "FieldSpec", "UnknownEndpoint",
           "get_profile", "known_endpoints", "profiles"]
