"""moto's server, with its DynamoDB requests applied one at a time.

moto 5 checks a write's condition and then writes, in two steps and without a lock, so two concurrent
conditional writes to one item can both succeed (measured: 5 of 200 racing pairs of `attribute_not_exists`
puts). DynamoDB itself never lets that happen, and the pipeline's claims and transitions rely on it. moto's
DynamoDB answers in milliseconds, so taking its requests in turn costs little; S3 and SQS (whose long polls
must not block each other) are left as they are. Arguments are moto.server's own.
"""

import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_lock = threading.Lock()
_call_action = DynamoHandler.call_action


def _call_action_in_turn(self):
    with _lock:
        return _call_action(self)


DynamoHandler.call_action = _call_action_in_turn

if __name__ == "__main__":
    main()
