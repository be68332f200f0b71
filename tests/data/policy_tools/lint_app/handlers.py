def handle(job):
    return True
