"""Package data: ImageNetLabels.txt, the 1001 class names of the TF-Hub
MobileNet V2 classifiers (line 1 is "background"), for offline use."""
