"""Package data: ImageNetLabels.txt, the 1001 class names of the TF-Hub
MobileNet V2 classifiers (line 1 is "background"): the default --labels."""
from pathlib import Path

#: The module's label list, as download.tensorflow.org/data/ImageNetLabels.txt
#: publishes it.
IMAGENET_LABELS = Path(__file__).resolve().with_name("ImageNetLabels.txt")
