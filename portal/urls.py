from django.contrib import admin
from django.urls import path

from portal import views

admin.site.site_header = "Luanti Voyager administration"
admin.site.site_title = "Luanti Voyager"

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
]
