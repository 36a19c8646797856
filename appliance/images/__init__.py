"""The image pipeline: release trees pushed to shadows as rsync deltas (imagesync), the
shadow pool (shadows), checks after every push and their verdict fed back to the build
(checks, feedback), run-time writes kept apart (ignore), trees verified (verify), and the
``image``/``shadow``/``build-hook``/``history`` commands (cli)."""
