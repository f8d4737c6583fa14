"""The catalog contract's columns (docs/reference.md): the required ones, the optional ones, all of them in order."""

REQUIRED_COLUMNS = ("item_id", "prompt", "image_uri", "scheduled_date")
OPTIONAL_COLUMNS = ("resolution", "aspect_ratio", "duration", "params", "end_image_uri", "endpoint_id")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
