"""What the tests run against: real servers on loopback, test mail and config builders."""
