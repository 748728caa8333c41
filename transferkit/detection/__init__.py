"""Object detection transferred from a classification backbone: data formats (COCO, YOLO, Pascal
VOC), a timm features-only backbone under torchvision FCOS / RetinaNet / Faster R-CNN, a plain
training loop, COCO-style metrics and predictions."""
