"""Evaluation: everything that judges or uses a trained embedding, one module each.

- gather: the features of a split, embedded on every rank and gathered (host tensors: the device rule)
- metrics: the post's figures as numbers (accuracy by the head's rule, spreads, angles, gaps)
- retrieval: precision@1, R-precision, MAP@R by pytorch-metric-learning's AccuracyCalculator
- openset: classes never seen in training (data.train_classes): unseen retrieval and unseen_auroc
- verification: pairs, 10-fold accuracy, ROC AUC, TAR at FAR
- evaluate: `arcdist evaluate`, a checkpoint's figures again (and --pairs)
- embed: `arcdist embed`, features of a split or a folder of images
- export: `arcdist export`, the backbone as ONNX or TorchScript

The prediction rule itself lives with the heads (`Head.scores`, and `arcdist.heads.geometry_scores` from saved
geometry).
"""
