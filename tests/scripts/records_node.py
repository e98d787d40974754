"""One process of the two-"node" records cache test: joins a gloo group from torchrun's
environment, reads a COCO-format dataset through the records cache, and writes what it read."""

import hashlib
import json
import sys
from pathlib import Path

import torch.distributed as dist

from resnet_det.data import catalog
from resnet_det.data.coco import load_coco_json
from resnet_det.data.records import COLUMNS


def main(annotations: str, images: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    parsed = Path(out) / f"parsed-by-rank-{rank}"

    def load(root, sanitizer):
        parsed.write_text("parsed")
        return load_coco_json(annotations, images, sanitizer)

    catalog.register_dataset("two_nodes", load, cache_sources=lambda root: [Path(annotations), Path(images)])
    store, metadata = catalog.get_dataset("two_nodes")
    digest = hashlib.sha256()
    for name in COLUMNS:
        digest.update(store.arrays[name].tobytes())
    result = {"sha256": digest.hexdigest(), "records": list(store), "class_names": metadata["class_names"]}
    result["memory_mapped"] = not store.arrays["bbox"].flags.owndata
    Path(out, f"rank-{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
