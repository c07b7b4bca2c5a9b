"""Character instances of a corpus's labelled sequences, cropped straight from its panels (no Ray, no crops job):
for checks of a corpus's difficulty that must not depend on the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from reid.core.data import formats
from reid.core.data.ids import parse_instance_id
from reid.core.geometry import crop_box


@dataclass
class Item:
    """One character instance of one sequence: its crops, its charId and the sequence's id."""

    face: Image.Image | None
    body: Image.Image | None
    label: str
    sequence: str


def sequence_items(corpus: str, split: str = "test") -> list[Item]:
    """Every annotated character instance of ``split``'s sequences, with its face and body crops."""
    boxes = formats.read_instances(f"{corpus}/data/ssl/merged_face_body.csv")
    box = {r.instance_id: (r.x_0, r.y_0, r.x1, r.y_1) for r in boxes.itertuples()}
    panels: dict[str, Image.Image] = {}

    def crop(instance: str | None) -> Image.Image | None:
        if instance is None:
            return None
        parsed = parse_instance_id(instance)
        panel = formats.panel_image_path(corpus, parsed.panel_id)
        if panel not in panels:
            with Image.open(panel) as im:
                panels[panel] = im.convert("RGB")
        image = panels[panel]
        return image.crop(crop_box(parsed.type, *box[instance], *image.size))

    return [Item(crop(inst.face), crop(inst.body), char.char_id, seq.seq_id)
            for seq in formats.read_split(f"{corpus}/data/comics_seq", split)
            for char in seq.characters for inst in char.instances]


def colour_metrics(items: list[Item]) -> dict[str, float]:
    """Within-sequence retrieval metrics of colour histograms (:mod:`reid.core.eval.baselines`)."""
    from reid.core.eval.baselines import colour_histogram_embedding
    from reid.core.eval.metrics import retrieval_metrics

    vectors = np.stack([colour_histogram_embedding(i.face, i.body) for i in items])
    return retrieval_metrics(vectors, [i.label for i in items], [i.sequence for i in items])


def colour_precision_at_1(items: list[Item]) -> float:
    """Within-sequence precision@1 of colour histograms."""
    return colour_metrics(items)["precision_at_1"]


def random_network_precision_at_1(items: list[Item], seed: int = 0, face_size: int = 48, body_size: int = 64
                                  ) -> float:
    """Within-sequence precision@1 of a randomly initialised Re-ID net (ResNet-18) in eval mode."""
    import torch

    from reid.core.embedding import CharacterEmbedder
    from reid.core.eval.metrics import retrieval_metrics
    from reid.core.models import ModelConfig, ReIDNet

    torch.manual_seed(seed)
    model = ReIDNet(ModelConfig(arch="slim_resnet10", face_size=face_size, body_size=body_size)).eval()
    embed = CharacterEmbedder(model)
    vectors = np.concatenate([embed([i.face for i in items[k:k + 64]], [i.body for i in items[k:k + 64]])
                              for k in range(0, len(items), 64)])
    return retrieval_metrics(vectors, [i.label for i in items], [i.sequence for i in items])["precision_at_1"]
