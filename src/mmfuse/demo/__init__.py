"""``mmfuse demo``: audio-visual digits, fused at every level, in about 30 s of CPU time.

Handwritten digit images (scikit-learn's ``load_digits``, 8x8) are paired by label with spoken
digits: the Free Spoken Digit Dataset recordings when ``--audio-dir`` points at them, else a
built-in **synthetic** set of spoken-digit-like sounds (not speech; said so in the output).
One run trains, jointly, a shared :class:`~mmfuse.encoders.ImageEncoder` and
:class:`~mmfuse.encoders.AudioEncoder` with

- a linear head per modality (single-modality accuracy),
- :class:`~mmfuse.fusion.DecisionFusion` of those heads' predictions (decision level),
- :class:`~mmfuse.fusion.AttentionFusion` of the two feature vectors, trained under
  :class:`~mmfuse.fusion.ModalityDropout` (feature level),
- :class:`~mmfuse.alignment.InfoNCELoss` between projections of the two features, every
  same-digit pair a positive (cross-modal retrieval),

and, beside them, a data-level classifier: :class:`~mmfuse.fusion.DataLevelFusion` puts the
image, shown as frames over the clip's duration, and the log-mel spectrogram on one timeline
before a small CNN. It prints a table of test accuracies (with each modality absent too) and
retrieval scores, and writes ``demo.png`` and ``results.json`` to ``--out``.

    mmfuse demo                                  # synthetic audio, about 30 s on one core
    mmfuse demo --audio-dir path/to/fsdd         # the real recordings (folder or its parent)
    mmfuse demo --quick --seed 1 --out /tmp/d    # a small run, seconds
    mmfuse demo --audio-dir fsdd --split speaker # leave-one-speaker-out: unheard speakers
    mmfuse demo --audio-dir fsdd --test-audio-dir other-speakers   # test on these only
    mmfuse demo --audio-dir fsdd --degraded --seeds 3   # noisy audio and images, 3 seeds

``--degraded`` (or ``--audio-snr DB`` and ``--image-noise S``) corrupts both modalities so that
neither alone is near 100 % and fusion has room to help; ``--seeds N`` repeats the run and
reports the mean and standard deviation.

The parts: :mod:`~mmfuse.demo.cli` (flags, their checks, the run), :mod:`~mmfuse.demo.model`,
:mod:`~mmfuse.demo.train` (training and evaluation) and :mod:`~mmfuse.demo.report` (table,
``demo.png``, ``results.json``). Nothing here imports torch until the demo runs.
"""

from .cli import DESCRIPTION, add_arguments, run

__all__ = ["DESCRIPTION", "add_arguments", "run"]
