"""fal endpoints as data: one profile per endpoint (input schema, catalog mapping, output, price, video shape).

`get_profile(endpoint_id)` returns the `EndpointProfile` of a known endpoint; `python -m sora_pipeline.endpoints`
lists the profiles and refreshes one from fal's OpenAPI document and price (docs/endpoints.md)."""

from .endpoint_set import EndpointSet
from .profile import EndpointProfile, FieldSpec
from .registry import (DEFAULT_ENDPOINT_ID, PROFILES_ENV, BadProfile, UnknownEndpoint, get_profile, known_endpoints,
                       profiles)

__all__ = ["DEFAULT_ENDPOINT_ID", "PROFILES_ENV", "BadProfile", "EndpointProfile", "EndpointSet", "FieldSpec", "UnknownEndpoint",
           "get_profile", "known_endpoints", "profiles"]
