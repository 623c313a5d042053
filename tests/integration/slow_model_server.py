"""The serving process (``create_app`` under uvicorn, the real CLI flags) with a model that takes a fixed time
per model call: ``python -m tests.integration.slow_model_server --model-delay-ms 50 --deployment ...``.

The tiny test bundle answers in well under a millisecond, so on its own the HTTP layer, not the model, bounds a
server's capacity, and overload would only measure the event loop. A fixed sleep per call (no CPU, like a model
on an accelerator) makes the model the bottleneck as MiniLM is in production, on a machine shared with the
load generator and other work.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np


def main() -> None:
    import uvicorn

    from tl_platform.serving.app import create_app
    from tl_platform.serving.deployment import VariantSpec
    from tl_platform.serving.model import ServingModel, TokenizedText, load_variant
    from tl_platform.serving.server import add_serve_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    parser.add_argument("--model-delay-ms", type=float, required=True, help="added to every model call")
    args = parser.parse_args()
    delay = args.model_delay_ms / 1000.0

    class SlowModel:
        def __init__(self, model: ServingModel) -> None:
            self.model = model
            self.version, self.precision, self.max_length = model.version, model.precision, model.max_length
            self.labels, self.label_names = model.labels, model.label_names

        def tokenize(self, texts: Sequence[str]) -> list[TokenizedText]:
            return self.model.tokenize(texts)

        def infer(self, token_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
            time.sleep(delay)
            return self.model.infer(token_ids)

        def project(self, embeddings: np.ndarray) -> np.ndarray:
            return self.model.project(embeddings)

    def loader(spec: VariantSpec, threads: int) -> ServingModel:
        return SlowModel(load_variant(spec, threads))

    app = create_app(config_from_args(args), loader)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
