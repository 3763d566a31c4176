"""recsys/models"""
