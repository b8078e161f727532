from django.apps import AppConfig


class TrainingTasksConfig(AppConfig):
    name = "training_tasks"
    verbose_name = "Training"
