"""pix2pixHD for the presenter: generators/discriminators, checkpoints and the face sketch.

``storyreel.pix2pixhd.sketch`` needs only numpy and OpenCV (the training data pipeline and the
render backend share it); ``networks`` and ``checkpoints`` need torch and are imported explicitly.
"""
