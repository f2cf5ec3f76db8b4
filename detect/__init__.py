"""Face detection and cropping: OpenCV cascade, torchvision Faster R-CNN, crop geometry, the crop stage."""
