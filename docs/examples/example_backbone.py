"""A backbone plugin: a small CNN of your own, with its weights from a local file (smallcnn:/path/weights.safetensors).

The harness needs the model with a fresh head, every parameter in an ordered group (stem, stages, head), the
preprocessing the weights expect, and the pre_logits/head pair it uses to cache frozen features."""
import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from tlbench import LINEAR_DEFAULT_INIT, Backbone, Preprocessing, UsageError, hookimpl


def block(inputs, outputs):
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU())


class SmallCNN(nn.Module):
    def __init__(self, num_classes, width=16):
        super().__init__()
        self.stem = block(3, width)
        self.stage1 = block(width, 2 * width)
        self.stage2 = block(2 * width, 4 * width)
        self.head = nn.Linear(4 * width, num_classes)

    def pre_logits(self, images):
        return self.stage2(self.stage1(self.stem(images))).mean(dim=(2, 3))

    def forward(self, images):
        return self.head(self.pre_logits(images))


class SmallCNNFamily:
    name = "smallcnn"
    description = "a 3-block CNN with weights from a file: smallcnn:/path/to/weights.safetensors"
    takes_argument = True

    def build(self, argument, num_classes, pretrained):
        model = SmallCNN(num_classes)  # the head is new: sized for this dataset
        weights = {}
        if pretrained:
            path = Path(argument).expanduser().resolve()
            if not path.is_file():
                raise UsageError(f"smallcnn weights file {str(path)!r} does not exist; fix the path after ':'")
            state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("head.")}
            model.load_state_dict(state, strict=False)  # everything but the head, checked below
            missing = {n for n, _ in model.named_parameters()} - set(state) - {"head.weight", "head.bias"}
            if missing:
                raise UsageError(f"{path} lacks {sorted(missing)[0]}: is it a smallcnn checkpoint?")
            weights = {"source": f"file:{path}", "file": str(path),
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        names = [name for name, _ in model.named_parameters()]
        groups = [(group, [n for n in names if n.startswith(group + ".")])
                  for group in ("stem", "stage1", "stage2", "head")]
        return Backbone(
            name=f"smallcnn:{argument}", model=model, groups=groups,
            preprocessing=Preprocessing(input_size=32, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                                        std=(0.25, 0.25, 0.25), crop_pct=1.0, source="smallcnn training recipe"),
            pre_logits=model.pre_logits, head=model.head, pretrained=pretrained, weights=weights,
            head_init=LINEAR_DEFAULT_INIT)


@hookimpl
def register_backbones(register):
    register(SmallCNNFamily())  # an instance, not the class
