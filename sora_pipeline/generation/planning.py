"""Planning a day: read and check every image once, price each item, compute its request key, and record the
PLANNED rows in the ledger (before anything is claimed or sent)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sora_pipeline.fal.inputs import ImageInput, ImageInputError
from sora_pipeline.generation.costs import estimate_cost
from sora_pipeline.generation.images import load_image
from sora_pipeline.generation.config import GenerationConfig
from sora_pipeline.generation.records import Planned, WorkItem
from sora_pipeline.ledger import Ledger, RequestSpec


def plan_items(items: list[WorkItem], config: GenerationConfig, ledger: Ledger) -> list[Planned]:
    """One `Planned` per item: its endpoint's profile, spec and image, or why it cannot be submitted (images cached
    by reference). Each item is priced and keyed by its own endpoint."""

    def load(ref: str) -> ImageInput | str:
        try:
            return load_image(ref, storage_options=config.storage_options,  # large ones: fal storage later
                              settings=config.caps.uploads)
        except ImageInputError as exc:
            return str(exc)

    refs = list(dict.fromkeys([*(i.image_ref for i in items), *(i.end_image_ref for i in items if i.end_image_ref)]))
    with ThreadPoolExecutor(max_workers=8) as pool:
        cache = dict(zip(refs, pool.map(load, refs), strict=True))
    planned = []
    for item in items:
        profile = config.profile_of(item.endpoint_id)
        image = cache[item.image_ref]
        if isinstance(image, str):
            planned.append(Planned(item, None, None, f"image_uri: {image}", profile=profile))
            continue
        end = cache[item.end_image_ref] if item.end_image_ref else None
        if isinstance(end, str):
            planned.append(Planned(item, None, None, f"end_image_uri: {end}", profile=profile))
            continue
        # the user's own OpenAI key makes a request free at fal only where the endpoint takes it (Sora's api_key)
        byo = config.openai_api_key is not None and profile.field_for("openai_api_key") is not None
        cost = estimate_cost(config.prices_of(profile.endpoint_id), resolution=item.resolution,
                             duration_s=item.duration, byo_openai_key=byo, audio=profile.audio_on(item.params),
                             aspect_ratio=item.aspect_ratio)
        spec = RequestSpec.create(profile.endpoint_id, item_id=item.item_id, day=item.day, prompt=item.prompt,
                                  resolution=item.resolution, aspect_ratio=item.aspect_ratio,
                                  duration=item.duration, image_sha256=image.sha256, used_openai_key=byo,
                                  estimated_cost=cost, backend=config.backend, params=item.params,
                                  end_image_sha256=end.sha256 if end is not None else None)
        planned.append(Planned(item, spec, image, end_image=end, profile=profile))
    ledger.plan([p.spec for p in planned if p.spec is not None])
    return planned


def payload_for(p: Planned, config: GenerationConfig) -> dict:
    """What the submit sends for a planned item, shaped by the endpoint's profile (reveals the OpenAI key, if
    any: never log it)."""
    item = p.item
    return p.profile.payload(
        prompt=item.prompt, image_url=p.image.url, resolution=item.resolution, aspect_ratio=item.aspect_ratio,
        duration=item.duration, params=item.params, secrets={"openai_api_key": config.openai_api_key},
        end_image_url=p.end_image.url if p.end_image is not None else None)
