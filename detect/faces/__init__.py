"""Anime faces: decoding, the cascade and Faster R-CNN detectors, crop geometry, the crop stage, detector
training and evaluation."""
