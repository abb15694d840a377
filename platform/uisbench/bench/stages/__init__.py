"""The stages of a cell (one module each) and the metric evaluator that scores a stage's output.

Every stage is a :class:`uisbench.bench._stage.Stage` run through the one ``StageRunner``; the
:class:`uisbench.bench._pipeline.Pipeline` creates them. Private to the bench engine."""
